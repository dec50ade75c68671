"""Merge methods: each one a pure function of the input tensors of one output tensor and
its resolved parameters, registered by name with the parameters it takes.

Every kernel has the signature ``fn(tensors, base, params, inputs, rng)``:
- ``tensors``: the input tensors, same shape, one per source model (base included);
- ``base``: index of the base model in ``tensors`` or None;
- ``params``: the method's global parameters (``lambda``, ``normalize``, ``t``, ...);
- ``inputs``: one dict of per-model parameters per tensor (``weight``, ``density``, ...);
- ``rng``: ``rng(i)`` returns the counter-based mask stream of input ``i`` (`rng.MaskStream`;
  random methods).

Meanings are those of mergekit 0.1.5 for the same names (docs/design.md, merge methods), so a recipe
means the same thing in both tools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from .taskvec import merge_task_vectors

#: sparsifications that draw random masks (their kernels need the inputs' mask streams)
RANDOM_SPARSIFY = ("random", "della")

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of a method. ``scope``: 'global' (one value per tensor), 'input' (one per
    model, base included) or 'non_base' (one per model other than the base)."""
    name: str
    kind: type
    scope: str
    default: Any = REQUIRED
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[tuple] = None

    def validate(self, value: Any, where: str) -> Any:
        """Return the value converted to ``kind``; raise ValueError naming ``where``."""
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{where}: {self.name}={value!r} is not one of {list(self.choices)}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {self.name} must be true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {self.name} must be a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where}: {self.name} must be finite, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError(f"{where}: {self.name}={value} is outside [{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class TaskVectors:
    """How a task-vector method treats the task vectors d_i = X_i - B (the engine calls
    `taskvec.merge_task_vectors` with them directly)."""
    sparsify: Optional[str]        # None, 'magnitude', 'random', 'outliers', 'della'
    consensus: bool                # TIES sign election

    @property
    def random(self) -> bool:
        return self.sparsify in RANDOM_SPARSIFY


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple
    summary: str
    base: str = "ignored"          # 'required' or 'ignored' (then a base is an ordinary input)
    min_inputs: int = 1            # counting the base, as mergekit does
    max_inputs: Optional[int] = None
    layer_slices: bool = False     # output built from layer slices (passthrough)
    task_vectors: Optional[TaskVectors] = None   # the task-vector family: how it sparsifies and combines

    def param(self, name: str) -> Optional[Param]:
        return next((p for p in self.params if p.name == name), None)


METHODS: Dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge_method {name!r}; known: {', '.join(sorted(METHODS))}") from None


# --------------------------------------------------------------------------- linear / slerp


def linear(tensors: Sequence[torch.Tensor], base, params, inputs, rng=None) -> torch.Tensor:
    """sum_i w_i X_i, divided by sum_i w_i when ``normalize`` (default). Computed in float32
    (float64 for float64 inputs), returned in the first input's dtype."""
    first = tensors[0]
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    weights = [float(p["weight"]) for p in inputs]
    out = torch.zeros_like(first, dtype=dtype)
    for x, w in zip(tensors, weights):
        out.add_(x.to(dtype), alpha=w)
    if params["normalize"]:
        total = sum(weights)
        if total == 0:
            raise ValueError("linear: the weights sum to 0, so normalize has nothing to divide by "
                             "(set normalize: false or change the weights)")
        out.div_(total)
    return out.to(first.dtype)


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995,
                  eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of two tensors viewed as flat vectors (t=0 -> v0). When the
    directions are (anti)parallel (|cos| > dot_threshold) it falls back to linear."""
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(-1).to(dtype)
    b = v1.reshape(-1).to(dtype)
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = float(((a * b).sum() / (na * nb)).clamp(-1, 1))
    if abs(dot) > dot_threshold:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        s = math.sin(theta)
        ca, cb = math.sin((1 - t) * theta) / s, math.sin(t * theta) / s
    return (a * ca).add_(b, alpha=cb).reshape(v0.shape).to(v0.dtype)


def slerp(tensors, base, params, inputs, rng=None) -> torch.Tensor:
    other = 1 - base
    return slerp_tensors(params["t"], tensors[base], tensors[other])


# --------------------------------------------------------------------------- task arithmetic family


def task_vector_merge(tensors, base, params, inputs, rng, *, sparsify: Optional[str],
                      consensus: bool) -> torch.Tensor:
    """The generalized task arithmetic of mergekit: task vectors d_i = X_i - B, optionally
    sparsified per model, weighted (D_i = w_i d_i), optionally sign-elected, summed,
    optionally normalised by the sum of the weights (of the kept models at each entry, under
    consensus), scaled by lambda and added to B. Computed in the inputs' dtype by the fused kernel
    (`taskvec.merge_task_vectors`), which callers holding the task vectors use directly."""
    b = tensors[base]
    others = [i for i in range(len(tensors)) if i != base]
    if not others:
        return b
    deltas = [torch.sub(tensors[i], b) for i in others]
    streams = [rng(i) if (rng is not None and sparsify in RANDOM_SPARSIFY) else None for i in others]
    return merge_task_vectors(b, deltas, [inputs[i] for i in others], params, streams,
                              sparsify=sparsify, consensus=consensus)


def model_stock(tensors, base, params, inputs, rng=None) -> torch.Tensor:
    """Model Stock: interpolate between the base and the average of the others by
    t = N cos / (1 + (N-1) cos), cos the mean pairwise cosine of the task vectors (per
    row with ``filter_wise``). At the singular point 1 + (N-1) cos = 0 the base is kept."""
    w0 = tensors[base]
    ws = [x for i, x in enumerate(tensors) if i != base]
    shape = w0.shape
    if params["filter_wise"]:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cos = []
    for i, a in enumerate(offsets):
        for c in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(c, dim=-1)
            cos.append(((a * c).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos_t = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos_t
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos_t),
                    n * cos_t / torch.where(singular, torch.ones_like(denom), denom))
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


def passthrough(tensors, base, params, inputs, rng=None) -> torch.Tensor:
    """One input copied through, optionally multiplied by its ``scale``."""
    scale = inputs[0].get("scale")
    return tensors[0] if scale is None else tensors[0] * scale


# --------------------------------------------------------------------------- registry

_UNIT = dict(low=0.0, high=1.0)
_W = Param("weight", float, "non_base")
_D = Param("density", float, "non_base", 1.0, **_UNIT)
_LAMBDA = Param("lambda", float, "global", 1.0)
_RESCALE_CHOICES = (True, False, "l1", "density", "none")


def _gta(name, summary, *, sparsify, consensus, normalize, rescale, extra=()):
    params = (_W, _D, _LAMBDA, Param("normalize", bool, "global", normalize),
              Param("rescale", object, "global", rescale, choices=_RESCALE_CHOICES),
              Param("int8_mask", bool, "global", False), *extra)

    def fn(tensors, base, p, inputs, rng=None):
        return task_vector_merge(tensors, base, p, inputs, rng, sparsify=sparsify, consensus=consensus)

    fn.__name__ = name
    return register(MergeMethod(name, fn, params, summary, base="required",
                                task_vectors=TaskVectors(sparsify, consensus)))


register(MergeMethod(
    "linear", linear,
    (Param("weight", float, "input"), Param("normalize", bool, "global", True)),
    "weighted average of the models (a base_model, if given, is one more input)"))
register(MergeMethod(
    "slerp", slerp, (Param("t", float, "global", **_UNIT),),
    "spherical interpolation between base_model (t=0) and one other model",
    base="required", min_inputs=2, max_inputs=2))
_gta("task_arithmetic", "base + lambda * sum_i w_i (X_i - base)",
     sparsify=None, consensus=False, normalize=False, rescale=False)
_gta("ties", "TIES: trim task vectors to top-density magnitudes, elect signs, average agreeing entries",
     sparsify="magnitude", consensus=True, normalize=True, rescale=False)
_gta("dare_ties", "DARE drop-and-rescale of task vectors, then TIES sign election",
     sparsify="random", consensus=True, normalize=False, rescale=True)
_gta("dare_linear", "DARE drop-and-rescale of task vectors, then a weighted sum",
     sparsify="random", consensus=False, normalize=False, rescale=True)
_GAMMA = Param("gamma", float, "non_base", 0.01, **_UNIT)
_gta("breadcrumbs", "Model Breadcrumbs: drop the largest (gamma) and smallest entries, weighted sum",
     sparsify="outliers", consensus=False, normalize=False, rescale=False, extra=(_GAMMA,))
_gta("breadcrumbs_ties", "Model Breadcrumbs trimming, then TIES sign election",
     sparsify="outliers", consensus=True, normalize=False, rescale=False, extra=(_GAMMA,))
_EPS = Param("epsilon", float, "non_base", 0.15, **_UNIT)
_gta("della", "DELLA: magnitude-ranked random drop (density +/- epsilon), then TIES sign election",
     sparsify="della", consensus=True, normalize=True, rescale=True, extra=(_EPS,))
_gta("della_linear", "DELLA drop, then a weighted sum",
     sparsify="della", consensus=False, normalize=False, rescale=True, extra=(_EPS,))
register(MergeMethod(
    "model_stock", model_stock, (Param("filter_wise", bool, "global", False),),
    "Model Stock: move from the base towards the models' average by their task vectors' agreement",
    base="required", min_inputs=3))
register(MergeMethod(
    "passthrough", passthrough, (Param("scale", float, "input", None),),
    "copy layer slices of the sources (a frankenmerge), each optionally scaled",
    max_inputs=1, layer_slices=True))
