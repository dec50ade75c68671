"""The memory sink: a search's candidates merged in place into one resident model.

Sources are loaded once; a candidate is a recipe (`ParamSpace.recipe`), planned by the same code as
`evollm merge --recipe` (`plan.py`) and executed by the same executor and kernels (`execute.py`), with
the same random streams, into the live parameters instead of output shards. So a candidate's merge is
its export's, bit for bit, whenever both read the same input values (see docs/design.md).

What changes between candidates is only what depends on the candidate: the plan's skeleton (tensors,
inputs, shapes, checks) is built once per recipe structure, parameter values are resolved once per
distinct (layer position, filter matches), and, when the inputs are held in the work dtype, the task
vectors X_i - B and their L1 norms are computed once and held instead of the sources.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch

from ..kernels.rng import mask_stream, uniform24
from ..kernels.taskvec import chunk_size, l1_norm
from ..recipe import Recipe, Source
from .execute import Inputs, merge_task, others
from .plan import MergeError, Skeleton, TensorTask, _shape_error, decoder_layers, structure_key


class _Resident:
    """A held model seen as a checkpoint by the planner: names, shapes, dtypes (no config, so the
    config checks have nothing to compare; the tensors themselves are checked)."""

    def __init__(self, name: str, shapes: Dict[str, tuple], dtype: torch.dtype):
        self.name, self.path, self.config = name, None, {}
        self._shapes, self._dtype = shapes, dtype

    def names(self):
        return list(self._shapes)

    def __contains__(self, name):
        return name in self._shapes

    def shape(self, name):
        return self._shapes[name]

    def dtype(self, name):
        return self._dtype


class InMemoryMerger:
    """Merge `sources` (name -> state dict) onto `base` (state dict) into `model`'s parameters, or into
    `targets` (name -> tensor, e.g. views of some of a larger model's parameters) when given.

    Inputs are held on `device` in `store_dtype` (bfloat16 halves the memory of 7B sources; lossless for
    sources saved in bfloat16). `refs` (source name -> model reference) and `base_ref` are the references
    the candidates' recipes use (default: the names themselves and "base"). `task_vectors`: hold the task
    vectors X_i - B (in float32, the work dtype of searches) and their L1 norms instead of the sources;
    default: when `store_dtype` is float32 (then it costs no memory). Holding them, only the task-vector
    methods can be merged, in float32. `hold_masks`: keep the DARE masks' uniforms (`rng.uniform24`, 4
    bytes per parameter and source, made by the first merge with a seed) so that a candidate's masks are
    one comparison with its densities; default: when the task vectors are held. `store_device`: where the
    inputs are held (default: `device`); "cpu" with a CUDA `device` holds them in pinned host memory and
    streams each tensor's inputs to the device when it is merged (the memory plan's "sources on host")."""

    WORK_DTYPE = torch.float32

    def __init__(self, model: torch.nn.Module, base: Dict[str, torch.Tensor],
                 sources: Dict[str, Dict[str, torch.Tensor]], device="cpu", store_dtype=torch.float32,
                 targets: Dict[str, torch.Tensor] = None, *, refs: Mapping[str, str] = None,
                 base_ref: str = None, task_vectors: Optional[bool] = None, hold_masks: Optional[bool] = None,
                 store_device: str = None):
        self.model, self.device = model.to(device), device
        self.store_device = store_device or device
        pin = str(self.store_device) == "cpu" and str(device).startswith("cuda")
        self.targets = dict(model.named_parameters()) if targets is None else dict(targets)
        self.names = list(sources)
        self.refs = {n: (refs or {}).get(n, n) for n in self.names}
        self.base_ref = base_ref or "base"
        if self.base_ref in self.refs.values() or len(set(self.refs.values())) < len(self.names):
            raise ValueError(f"model references must differ: base {self.base_ref!r}, sources {self.refs}")
        self.store_dtype = store_dtype
        self.task_vectors = (store_dtype == self.WORK_DTYPE) if task_vectors is None else task_vectors
        prefix, self.n_layers = decoder_layers(self.targets)
        for k in self.targets:
            missing = [n for n in self.names if k not in sources[n]]
            if k not in base or missing:
                raise KeyError(f"tensor {k} missing from {'base' if k not in base else missing}")
            for n in self.names:
                if tuple(sources[n][k].shape) != tuple(base[k].shape):
                    raise _shape_error(k, self.base_ref, base[k].shape, self.refs[n], sources[n][k].shape)

        def held(x):
            return x.pin_memory() if pin else x

        def hold(x, k):
            # an input that shares storage with the target would be overwritten by the first merge
            return held(x.detach().to(self.store_device, store_dtype, copy=x.data_ptr() == self.targets[k].data_ptr()))

        self.base = {k: hold(base[k], k) for k in self.targets}
        self.held: Dict[str, Dict[str, torch.Tensor]] = {}      # ref -> name -> source tensor
        self.deltas: Dict[str, Dict[str, torch.Tensor]] = {}    # ref -> name -> task vector (work dtype)
        self._norms: Dict[tuple, torch.Tensor] = {}
        self.hold_masks = self.task_vectors if hold_masks is None else hold_masks
        self._uniforms: Dict[tuple, torch.Tensor] = {}          # (seed, candidate, tensor, input) -> uniforms
        if self.task_vectors:
            # per tensor, one (sources, numel) buffer whose rows are the task vectors in source order
            for k in self.targets:
                b = self.base[k].to(self.WORK_DTYPE).reshape(-1)
                stack = torch.empty((len(self.names), b.numel()), dtype=self.WORK_DTYPE, device=self.store_device,
                                    pin_memory=pin)
                for row, n in enumerate(self.names):
                    torch.sub(sources[n][k].detach().to(self.store_device, self.WORK_DTYPE).reshape(-1), b,
                              out=stack[row])
                    self.deltas.setdefault(self.refs[n], {})[k] = stack[row].view(self.base[k].shape)
        else:
            for n in self.names:
                self.held[self.refs[n]] = {k: hold(sources[n][k], k) for k in self.targets}
        shapes = {k: tuple(t.shape) for k, t in self.base.items()}
        self.resident = {self.base_ref: _Resident(self.base_ref, shapes, store_dtype)}
        for n in self.names:
            src = self.deltas.get(self.refs[n]) or self.held[self.refs[n]]
            self.resident[self.refs[n]] = _Resident(self.refs[n], {k: tuple(t.shape) for k, t in src.items()},
                                                    store_dtype)
        self._skeletons: Dict[tuple, Skeleton] = {}

    # -- planning
    def recipe(self, method: str, global_params: Mapping = None, per_model: Mapping = None) -> Recipe:
        """The recipe of a merge of every source onto the base (sources in order, base last)."""
        per_model = per_model or {}
        return Recipe(merge_method=method, base_model=self.base_ref,
                      models=[Source(self.refs[n], dict(per_model.get(n, {}))) for n in self.names],
                      parameters=dict(global_params or {}), dtype="float32", origin="<in-memory merge>")

    def plan(self, recipe: Recipe) -> List[TensorTask]:
        key = structure_key(recipe)
        sk = self._skeletons.get(key)
        if sk is None:
            unknown = [r for r in recipe.model_refs() if r not in self.resident]
            if unknown:
                raise MergeError(f"{recipe.origin}: model {unknown[0]} is not one this merger holds "
                                 f"({', '.join(self.resident)})")
            sk = self._skeletons[key] = Skeleton.build(recipe, self.resident)
        return sk.tasks(recipe)

    # -- merging
    @torch.no_grad()
    def merge_recipe(self, recipe: Recipe, seed: int = 0, candidate: int = 0):
        """Write `recipe`'s merge into the model in place and return the model (on error, some targets
        may hold this merge and others the previous one)."""
        tasks = self.plan(recipe)
        method = recipe.method
        if self.task_vectors and method.task_vectors is None:
            raise MergeError(f"{method.name}: this in-memory merger holds task vectors, not the sources "
                             "(build it with task_vectors=False to merge other methods)")
        inputs = _ResidentInputs(self)
        for task in tasks:
            merge_task(task, method, inputs, seed, candidate, out=self.targets[task.name])
        return self.model

    def merge(self, method_name: str, global_params: Mapping = None, per_model: Mapping = None,
              seed: int = 0, candidate: int = 0):
        """`merge_recipe` of `recipe(...)`: parameter values may be anything a recipe accepts (a number,
        a gradient over the layers, a list of filters)."""
        return self.merge_recipe(self.recipe(method_name, global_params, per_model), seed, candidate)

    def norm(self, ref: str, name: str) -> torch.Tensor:
        """L1 norm of a held task vector (computed once)."""
        key = (ref, name)
        if key not in self._norms:
            self._norms[key] = l1_norm(self.deltas[ref][name].to(self.device, non_blocking=True))
        return self._norms[key]


    def uniforms(self, seed: int, candidate: int, tensor: str, idx, numel: int) -> List[torch.Tensor]:
        """The held uniforms of the streams of inputs `idx` of a tensor, rows of one buffer (those of one
        seed and candidate are kept at a time)."""
        key = (seed, candidate, tensor, tuple(idx))
        u = self._uniforms.get(key)
        if u is None:
            if any(k[:2] != key[:2] for k in self._uniforms):
                self._uniforms.clear()
            stack = torch.stack([uniform24(mask_stream(seed, tensor, i, candidate), numel, self.device,
                                           chunk_size(self.device)) for i in idx])
            u = self._uniforms[key] = [stack[k] for k in range(len(idx))]
        return u


class _ResidentInputs(Inputs):
    def __init__(self, merger: InMemoryMerger):
        self.m, self.device = merger, merger.device

    def tensor(self, task, i):
        ref, name = task.inputs[i]
        m = self.m
        x = m.base[name] if ref == m.base_ref else m.held.get(ref, {}).get(name)
        if x is None:
            raise MergeError(f"{task.name}: {task.work_dtype} inputs asked for, but this in-memory merger holds "
                             "the sources only as float32 task vectors")
        return x.to(self.device, non_blocking=True).to(task.work_dtype)

    def streams(self, task, idx, seed, candidate, sparsify):
        m = self.m
        if not (m.hold_masks and sparsify == "random"):
            return super().streams(task, idx, seed, candidate, sparsify)
        return m.uniforms(seed, candidate, task.name, idx, m.base[task.name].numel())

    def task_vectors(self, task):
        m = self.m
        if not m.task_vectors:
            return super().task_vectors(task)
        if task.work_dtype != m.WORK_DTYPE:
            raise MergeError(f"tensor {task.name}: this in-memory merger holds float32 task vectors; the "
                             f"recipe asks for {task.work_dtype}")
        b = m.base[task.name].to(m.device, non_blocking=True).to(m.WORK_DTYPE)
        ins = [task.inputs[i] for i in others(task)]
        return (b, [m.deltas[r][n].to(m.device, non_blocking=True) for r, n in ins],
                [m.norm(r, n) for r, n in ins])
