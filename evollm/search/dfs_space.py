"""Data-flow-space search: genome <-> (indicator array I, scaling matrix W) <-> a layer path, and the
Workbench that evaluates a path as a DFS model over two sources (evollm.dfs).

Genes: T indicator genes (slot t is on iff gene > 0.5, i.e. I_t = gene - 0.5), then the M x M scaling
matrix W row by row (`scales: matrix`, the paper's), or for large M the small form `scales: target`
(M genes: W[i, j] = w_j, one scale per layer entered), each gene mapped linearly to [scale.low, scale.high]. Initial point: A's first
repetition on (0.75) and every other slot off (0.25), W at scale.init (the paper's initialisation).
"""

from __future__ import annotations

import numpy as np
import torch
import yaml

from ..dfs import Hop, build_dfs_model, path_from, save_dfs, slots
from ..hub import batch_tokenizer, load_causal_lm
from .workbench import Workbench


class DfsSpace:
    def __init__(self, a: str, b: str, refs: dict, n_layers: int, repeats: int, layout: str, scale: dict,
                 scales: str = "matrix"):
        if layout == "select" and repeats != 1:
            raise ValueError("search.dfs: layout `select` takes repeats: 1 (one layer per depth position)")
        self.a, self.b, self.refs, self.L, self.r, self.layout, self.scale = a, b, refs, n_layers, repeats, layout, scale
        self.order = slots(n_layers, repeats, layout)
        self.T, self.M = len(self.order), 2 * n_layers
        self.scales = scales
        self.n_scale = self.M * self.M if scales == "matrix" else self.M

    @property
    def dim(self) -> int:
        return self.T + self.n_scale

    def initial(self) -> np.ndarray:
        x = np.full(self.dim, 0.25)
        first = range(self.L) if self.layout == "model-major" else range(0, 2 * self.L, 2)
        x[list(first)] = 0.75                         # A's layers, first repetition
        s = self.scale
        x[self.T:] = (s["init"] - s["low"]) / (s["high"] - s["low"])
        return x

    def hops(self, x) -> list:
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        if x.shape != (self.dim,):
            raise ValueError(f"genome of length {x.shape} given, the DFS space has {self.dim} genes")
        s = self.scale
        g = s["low"] + (s["high"] - s["low"]) * x[self.T:]
        W = g.reshape(self.M, self.M) if self.scales == "matrix" else np.tile(g, (self.M, 1))
        return path_from(x[:self.T] - 0.5, W, self.L, self.r, self.layout)

    def decode(self, x) -> dict:
        """The path as the run logs it: [[model name, layer, scale], ...] (scales rounded to 6 digits)."""
        names = (self.a, self.b)
        return {"path": [[names[h.model], h.layer, round(h.scale, 6)] for h in self.hops(x)]}

    def hops_of(self, params: dict) -> list:
        idx = {self.a: 0, self.b: 1}
        return [Hop(idx[m], int(i), float(s)) for m, i, s in params["path"]]

    def recipe_yaml(self, params: dict, refs: dict = None) -> str:
        """The DFS recipe: which layer of which model at each hop, with its input scale (models named by
        `refs`, name -> reference, default the space's)."""
        refs = refs or self.refs
        return yaml.safe_dump({"dfs": {"a": refs[self.a], "b": refs[self.b], "layout": self.layout,
                                       "path": [{"model": refs[m], "layer": i, "scale": s}
                                                for m, i, s in params["path"]]}},
                              sort_keys=False, allow_unicode=True)

    def passthrough_yaml(self, params: dict, refs: dict = None):
        """A mergekit passthrough recipe writing the same checkpoint (scales folded into o_proj and
        down_proj), or None where mergekit cannot express it: its non-layer tensors come from the
        first and last slices' models, while a DFS model always takes A's."""
        path, refs = params["path"], refs or self.refs
        if not path or path[0][0] != self.a or path[-1][0] != self.a:
            return None
        slices, cum = [], 1.0
        for m, i, s in path:
            cum *= s
            inv = 1.0 / cum
            p = {} if inv == 1.0 else {"scale": [{"filter": "o_proj", "value": inv},
                                                 {"filter": "down_proj", "value": inv}, {"value": 1.0}]}
            slices.append({"sources": [{"model": refs[m], "layer_range": [i, i + 1]}], **({"parameters": p} if p else {})})
        return yaml.safe_dump({"merge_method": "passthrough", "slices": slices, "dtype": "float32"},
                              sort_keys=False, allow_unicode=True)


class DfsWorkbench(Workbench):
    """Data-flow space: two sources held as models; a candidate is a DFS model sharing their layers
    (built per candidate in microseconds; no weights are copied)."""
    passthrough = True          # also write a mergekit passthrough recipe where it can express the path

    def __init__(self, cfg):
        super().__init__(cfg)
        d = cfg.search.dfs
        self.a, self.b = d.a, d.b
        self.models, processor, (layers_a, layers_b) = self.load_models(cfg.refs, self.dtype)
        if len(layers_a) != len(layers_b):
            raise ValueError(f"search.dfs: models {d.a} and {d.b} have {len(layers_a)} and {len(layers_b)} "
                             "layers; DFS needs equal depth")
        self.n_layers = len(layers_a)
        self.open_task(processor)
        self.space = DfsSpace(d.a, d.b, cfg.refs, self.n_layers, d.repeats, d.layout, vars(d.scale), d.scales)

    def load_models(self, refs: dict, dtype):
        """(name -> model for A and B, A's tokenizer or processor, (A's layers, B's layers))."""
        models = {n: load_causal_lm(refs[n], dtype, self.device) for n in (self.a, self.b)}
        tok = batch_tokenizer(refs[self.a])
        return models, tok, (models[self.a].model.layers, models[self.b].model.layers)

    def ready(self, rows, log=print):
        """The memory plan: A and B stay on the device (a candidate references their layers, nothing is
        copied); a token's KV cache holds one entry per hop of the longest path."""
        from ..memplan import kv_bytes_per_token
        esize = torch.tensor([], dtype=self.dtype).element_size()
        per_layer = kv_bytes_per_token(self.models[self.a].config.to_dict(), esize) // self.n_layers
        return self.plan(rows, log, model_bytes=sum(p.numel() * p.element_size() for m in self.models.values()
                                                    for p in m.parameters()),
                         largest_tensor=0, n_inputs=0, store_bytes_per_param=0, model_params=0,
                         kv_per_token=per_layer * self.space.T)

    def candidate(self, params: dict):
        return build_dfs_model(self.models[self.a], self.models[self.b], self.space.hops_of(params))

    def export_best(self, best: dict, folder):
        from ..card import portable
        space = self.space
        names = {m.model: m.name for m in self.cfg.models}
        refs = {n: portable(r, names) for n, r in space.refs.items()}      # no path of this machine in the export
        (folder / "recipe.yaml").write_text(space.recipe_yaml(best["parameters"], refs))
        mk = space.passthrough_yaml(best["parameters"], refs) if self.passthrough else None
        if mk is not None:
            (folder / "mergekit_config.yml").write_text(mk)
        self.save(space.hops_of(best["parameters"]), folder / "model")

    def save(self, hops, folder):
        save_dfs(self.models[self.a], self.models[self.b], hops, folder, tokenizer=self.processor)

    def b_label(self) -> str:
        return self.b

    def b_alone(self):
        return self.models[self.b]

    def load_exported(self, path):
        from transformers import AutoModelForCausalLM
        return AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()

    def reference_models(self) -> dict:
        models = {}
        if self.cfg.report.sources:
            models[self.a] = lambda: self.models[self.a]
            models[self.b_label()] = self.b_alone
        if self.cfg.report.baselines:
            L = self.n_layers
            stack = [[self.a, i, 1.0] for i in range(L)] + [[self.b, i, 1.0] for i in range(L)]
            models["A's layers then B's, unscaled (a frankenmerge)"] = lambda: self.candidate({"path": stack})
            models["DFS at the initial point"] = lambda: self.candidate(self.space.decode(self.space.initial()))
        return models
