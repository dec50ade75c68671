"""The in-memory merger as it was before the one-engine rework (commit 7463207), kept importable only for
benchmarks/merge_engine.py: `InMemoryMerger` from evollm/engine/memory.py, the task-vector kernel
from evollm/kernels/methods.py and the generator-based DARE drop from evollm/kernels/sparsify.py, with
its torch.Generator streams from evollm/kernels/rng.py. Copied verbatim except for imports and
names; the unchanged helpers (parameter resolution, magnitude selection, layer positions) are
imported from the package. Not used by evollm.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Mapping, Optional

import torch

from evollm.engine.plan import MergeError, decoder_layers, layer_position
from evollm.kernels import sparsify as sp
from evollm.kernels.methods import get_method
from evollm.recipe import resolve


# --------------------------------------------------------------------------- kernels/rng.py


def derive_seed(*parts) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def tensor_generator(seed: int, tensor: str, model: str, device="cpu", candidate: int = 0) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, candidate, tensor, model))
    return g


# --------------------------------------------------------------------------- kernels/sparsify.py


def bernoulli(t: torch.Tensor, density: float, generator: torch.Generator, rescale: Optional[str] = "l1"):
    """DARE drop: keep each entry independently with probability ``density``."""
    if density >= 1:
        return t
    if density <= 0:
        return torch.zeros_like(t)
    work = sp._work_dtype(t)
    mask = torch.rand(t.shape, generator=generator, device=t.device) < density
    return sp._apply_mask(t.to(work), mask, rescale, keep_prob=density).to(t.dtype)


# --------------------------------------------------------------------------- kernels/methods.py


def _sign_consensus(deltas: torch.Tensor) -> torch.Tensor:
    majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return deltas * majority > 0


def task_vector_merge(tensors, base, params, inputs, rng, *, sparsify: Optional[str], consensus: bool):
    b = tensors[base]
    others = [i for i in range(len(tensors)) if i != base]
    if not others:
        return b
    rescale = params.get("rescale")
    rescale = None if rescale in (False, "none") else ("l1" if rescale is True else rescale)
    deltas = b.new_empty((len(others), *b.shape))
    for row, i in enumerate(others):
        raw = d = torch.sub(tensors[i], b, out=deltas[row])
        p = inputs[i]
        if sparsify == "magnitude":
            d = sp.magnitude(d, p["density"], rescale)
        elif sparsify == "random":
            d = bernoulli(d, p["density"], rng(i), rescale)
        elif sparsify == "outliers":
            d = sp.magnitude_outliers(d, p["density"], p["gamma"], rescale)
        if d is not raw:
            deltas[row] = d
    weights = torch.tensor([inputs[i]["weight"] for i in others], dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape(-1, *([1] * b.dim()))
    deltas.mul_(weights)
    if consensus:
        keep = _sign_consensus(deltas)
        merged = deltas.mul_(keep).sum(dim=0)
        divisor = torch.tensordot(weights.reshape(-1), keep.to(deltas.dtype), dims=1)
        divisor[divisor == 0] = 1
    else:
        merged = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if params["normalize"]:
        merged /= divisor
    if params["lambda"] != 1:
        merged *= params["lambda"]
    return merged.add_(b).to(b.dtype)


def _kernel(method):
    tv = method.task_vectors
    if tv is None or tv.sparsify == "della":
        raise ValueError(f"the legacy benchmark copy covers the task-vector family without DELLA, not {method.name}")
    return lambda tensors, base, p, inputs, rng: task_vector_merge(tensors, base, p, inputs, rng,
                                                                    sparsify=tv.sparsify, consensus=tv.consensus)


# --------------------------------------------------------------------------- engine/memory.py


def resolve_params(method_name: str, global_params: Mapping, per_model: Mapping[str, Mapping], names,
                   tensor_name: str = "", t: float = 0.0):
    method = get_method(method_name)
    g = {p.name: resolve(method, p.name, [global_params], tensor_name, t, f"tensor {tensor_name}")
         for p in method.params if p.scope == "global"}
    per = [{p.name: resolve(method, p.name, [per_model.get(n, {}), global_params], tensor_name, t,
                            f"model {n}, tensor {tensor_name}")
            for p in method.params if p.scope in ("non_base", "input")} for n in names]
    return method, g, per


class LegacyInMemoryMerger:
    def __init__(self, model: torch.nn.Module, base: Dict[str, torch.Tensor],
                 sources: Dict[str, Dict[str, torch.Tensor]], device="cpu", store_dtype=torch.float32,
                 targets: Dict[str, torch.Tensor] = None):
        self.model, self.device = model.to(device), device
        self.targets = dict(model.named_parameters()) if targets is None else dict(targets)
        self.names = list(sources)
        self.tensors = {}
        prefix, self.n_layers = decoder_layers(self.targets)
        self.t = {k: layer_position(k, prefix, self.n_layers) for k in self.targets}
        for k, t in self.targets.items():
            missing = [n for n in self.names if k not in sources[n]]
            if k not in base or missing:
                raise KeyError(f"tensor {k} missing from {'base' if k not in base else missing}")
            ins = [sources[n][k] for n in self.names] + [base[k]]
            self.tensors[k] = [x.detach().to(device, store_dtype, copy=x.data_ptr() == t.data_ptr())
                               for x in ins]

    @torch.no_grad()
    def merge(self, method_name: str, global_params: Mapping = None, per_model: Mapping = None,
              seed: int = 0, candidate: int = 0):
        base_idx = len(self.names)
        for k, ts in self.tensors.items():
            method, g, per = resolve_params(method_name, global_params or {}, per_model or {}, self.names,
                                            k, self.t[k])
            rng = lambda i, k=k: tensor_generator(seed, k, i, device=self.device, candidate=candidate)
            out = _kernel(method)([x.float() for x in ts], base_idx, g, per + [{}], rng)
            if not torch.isfinite(torch.stack(torch.aminmax(out))).all():
                raise MergeError(f"tensor {k}: the merge produced NaN or inf ({method_name}, {per})")
            self.targets[k].copy_(out.to(self.targets[k].dtype))
        return self.model
