"""Parameter-space search space: a genome in the unit box <-> a mergekit-style recipe.

Gene layout: for each searched parameter (config order), for each source model, for each layer
group, one gene x in [0, 1], mapped linearly to [low, high]. With one layer group a parameter is a
number in the recipe; with G groups it is a list with one value per decoder layer (constant within
a group), which a recipe reads as a gradient hitting every layer exactly; tensors outside the
decoder layers (embeddings, final norm, head) take the first group's value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ..recipe import Recipe, RecipeError, Source


class ParamSpace:
    def __init__(self, names: List[str], refs: Dict[str, str], base_ref: str, method: str,
                 params: Dict[str, dict], fixed: Dict = None, layer_groups: int = 1, n_layers: int = 1,
                 dtype: str = "float32", out_dtype: str = "bfloat16"):
        if layer_groups > max(n_layers, 1):
            raise ValueError(f"search.layer_groups = {layer_groups} exceeds the {n_layers} decoder layers")
        self.names, self.refs, self.base_ref, self.method = list(names), dict(refs), base_ref, method
        self.params, self.fixed = dict(params), dict(fixed or {})
        self.groups, self.n_layers = layer_groups, n_layers
        self.dtype, self.out_dtype = dtype, out_dtype
        # group of each layer: G contiguous groups, as even as possible
        self.layer_group = [min(i * layer_groups // n_layers, layer_groups - 1) for i in range(n_layers)]

    @classmethod
    def of(cls, cfg, n_layers: int) -> "ParamSpace":
        """The space a run config (`RunConfig`) searches over models of `n_layers` decoder layers."""
        s = cfg.search
        return cls([m.name for m in cfg.models], cfg.refs, cfg.base_model, s.method,
                   {k: vars(b) for k, b in s.params.items()}, dict(s.fixed), s.layer_groups, n_layers,
                   dtype="float32", out_dtype=cfg.out_dtype)

    @property
    def dim(self) -> int:
        return len(self.params) * len(self.names) * self.groups

    def _idx(self, p: int, m: int, g: int) -> int:
        return (p * len(self.names) + m) * self.groups + g

    def initial(self) -> np.ndarray:
        x = np.empty(self.dim)
        for p, b in enumerate(self.params.values()):
            x[p * len(self.names) * self.groups:(p + 1) * len(self.names) * self.groups] = \
                (b["init"] - b["low"]) / (b["high"] - b["low"])
        return x

    # -- genome -> parameters -> recipe
    def per_model(self, x) -> Dict[str, dict]:
        """Per-model parameters as a recipe writes them (values rounded to 6 digits, so the YAML
        and the in-memory merge use the very same numbers)."""
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        if x.shape != (self.dim,):
            raise ValueError(f"genome of length {x.shape} given, the space has {self.dim} genes")
        out = {}
        for m, n in enumerate(self.names):
            d = {}
            for p, (pname, b) in enumerate(self.params.items()):
                vals = [round(float(b["low"] + (b["high"] - b["low"]) * x[self._idx(p, m, g)]), 6)
                        for g in range(self.groups)]
                d[pname] = vals[0] if self.groups == 1 else [vals[self.layer_group[i]] for i in range(self.n_layers)]
            out[n] = d
        return out

    decode = per_model         # what a candidate is, as the run logs it and the Workbench builds it

    def recipe(self, x) -> Recipe:
        """The recipe of genome `x`: what the in-memory merge of the candidate runs and the export writes."""
        return self.recipe_of(self.per_model(x))

    def recipe_of(self, per: Dict[str, dict]) -> Recipe:
        """The recipe of decoded per-model parameters (`per_model`'s output, as the log stores them). A
        method that ignores the base (linear) merges the sources alone: the base is no input of it."""
        from ..kernels import get_method
        base = None if get_method(self.method).base == "ignored" else self.base_ref
        return Recipe(merge_method=self.method, base_model=base,
                      models=[Source(self.refs[n], per[n]) for n in self.names],
                      parameters=dict(self.fixed), dtype=self.dtype, out_dtype=self.out_dtype)

    # -- recipe -> genome
    def genome(self, recipe: Recipe) -> np.ndarray:
        """The genome a recipe of this space came from (inverse of `recipe`, up to rounding)."""
        if recipe.merge_method != self.method:
            raise RecipeError(f"{recipe.origin}: merge_method {recipe.merge_method!r}, the space searches {self.method!r}")
        by_ref = {s.model: s.parameters for s in recipe.models or []}
        by_name = {Path(s.model).name: s.parameters for s in recipe.models or []}   # relative paths, copies
        x = np.empty(self.dim)
        for m, n in enumerate(self.names):
            params = by_ref.get(self.refs[n], by_name.get(Path(self.refs[n]).name))
            if params is None:
                raise RecipeError(f"{recipe.origin}: model {self.refs[n]} ({n}) is not in the recipe")
            for p, (pname, b) in enumerate(self.params.items()):
                v = params.get(pname)
                if v is None:
                    raise RecipeError(f"{recipe.origin}: model {n} has no `{pname}`")
                vals = v if isinstance(v, list) else [v] * self.n_layers
                if len(vals) != self.n_layers and self.groups > 1:
                    raise RecipeError(f"{recipe.origin}: model {n} `{pname}` has {len(vals)} values, "
                                      f"the space writes one per layer ({self.n_layers})")
                for g in range(self.groups):
                    first = self.layer_group.index(g) if self.groups > 1 else 0
                    x[self._idx(p, m, g)] = (float(vals[first]) - b["low"]) / (b["high"] - b["low"])
        return x
