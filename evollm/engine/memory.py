"""In-memory merging for search: sources loaded once, each candidate written in place into one model.

Nothing touches disk per candidate. Kernels, parameter defaults and the per-tensor random streams are
the same as `evollm merge` uses, so a candidate merged here equals the exported recipe's output.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch

from ..kernels.methods import get_method
from ..kernels.rng import tensor_generator
from .disk import MergeError, decoder_layers, layer_position
from ..recipe import resolve


def resolve_params(method_name: str, global_params: Mapping, per_model: Mapping[str, Mapping], names,
                   tensor_name: str = "", t: float = 0.0):
    """Resolve a recipe's parameter settings (numbers, layer gradients, filter lists) for one tensor,
    with the recipe's own precedence and defaults; returns (method, global params, [per-model params])."""
    method = get_method(method_name)
    g = {p.name: resolve(method, p.name, [global_params], tensor_name, t, f"tensor {tensor_name}")
         for p in method.params if p.scope == "global"}
    per = [{p.name: resolve(method, p.name, [per_model.get(n, {}), global_params], tensor_name, t,
                            f"model {n}, tensor {tensor_name}")
            for p in method.params if p.scope in ("non_base", "input")} for n in names]
    return method, g, per


class InMemoryMerger:
    """Merge `sources` (name -> state dict) onto `base` (state dict) into `model`'s parameters, or
    into `targets` (name -> tensor, e.g. views of some of a larger model's parameters) when given.

    Inputs are held on `device` in `store_dtype` (bfloat16 halves the memory of 7B sources; lossless
    for sources saved in bfloat16) and each tensor is merged in float32, as `evollm merge` does."""

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
            # inputs in the order `evollm merge` uses for a recipe listing the sources then base_model
            # (base last, as mergekit appends it): same positions, same random-mask streams
            ins = [sources[n][k] for n in self.names] + [base[k]]
            # an input that shares storage with the target would be overwritten by the first merge
            self.tensors[k] = [x.detach().to(device, store_dtype, copy=x.data_ptr() == t.data_ptr())
                               for x in ins]

    @torch.no_grad()
    def merge(self, method_name: str, global_params: Mapping = None, per_model: Mapping = None,
              seed: int = 0, candidate: int = 0):
        """Write the merge into the model in place and return the model. Parameter values may be
        anything a recipe accepts (a number, a gradient over the layers, a list of filters)."""
        base_idx = len(self.names)
        for k, ts in self.tensors.items():
            method, g, per = resolve_params(method_name, global_params or {}, per_model or {}, self.names,
                                            k, self.t[k])
            rng = lambda i, k=k: tensor_generator(seed, k, i, device=self.device, candidate=candidate)
            out = method.fn([x.float() for x in ts], base_idx, g, per + [{}], rng)
            if not torch.isfinite(torch.stack(torch.aminmax(out))).all():   # NaN propagates to min/max
                raise MergeError(f"tensor {k}: the merge produced NaN or inf ({method_name}, {per})")
            self.targets[k].copy_(out.to(self.targets[k].dtype))
        return self.model
