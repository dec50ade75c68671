"""Data-flow-space (DFS) models: the hidden state passes through a path of layers taken from two
source models A and B, scaled between hops (docs/design.md, search spaces).

- Slots: M = 2L layer candidates (A's L layers, then B's), repeated r times, in a `layout`:
  `model-major` (the paper's: all of A, all of B, r times), `layer-major` (layer 1 of A, of B, then
  layer 2, ...), or `select` (one slot per depth position, choosing A's or B's layer there).
- Path: the slots whose indicator I_t > 0, in slot order (for `select`, the larger of the two
  indicators at each depth). A hop from candidate i to candidate j scales the input of j by W[i, j];
  the first hop (from the embeddings) is not scaled.
- Execution: layers are shared by reference (memory stays that of the two sources); each hop gets
  its own KV-cache slot (its layer's `Cache.update(k, v, layer_idx, ...)` is redirected to the
  hop's index), so a layer visited twice keeps two cache entries; A supplies the tokenizer,
  embeddings, final norm and head.
- Export: with pre-norm RMSNorm layers, scaling the residual stream entering hop k by s_k equals
  (up to the norm's epsilon) dividing hop k's output projections (attention o_proj, MLP down_proj)
  by S_k = s_1 * ... * s_k; so the DFS model is written as a plain checkpoint of A's architecture
  with num_hidden_layers = len(path).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

LAYOUTS = ("model-major", "layer-major", "select")
OUT_PROJECTIONS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


@dataclass(frozen=True)
class Hop:
    model: int          # 0 = A, 1 = B
    layer: int
    scale: float


def slots(n_layers: int, repeats: int, layout: str) -> List[Tuple[int, int]]:
    """(model, layer) of every slot, in slot order."""
    if layout == "model-major":
        one = [(m, i) for m in (0, 1) for i in range(n_layers)]
    elif layout in ("layer-major", "select"):
        one = [(m, i) for i in range(n_layers) for m in (0, 1)]
    else:
        raise ValueError(f"unknown DFS layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return one * repeats


def candidate(m: int, i: int, n_layers: int) -> int:
    """Index of layer i of model m among the M = 2L layer candidates (rows/columns of W)."""
    return m * n_layers + i


def path_from(indicators: Sequence[float], scales: np.ndarray, n_layers: int, repeats: int = 1,
              layout: str = "model-major") -> List[Hop]:
    """The hops an indicator array I (one value per slot) and a scaling matrix W (2L x 2L) give."""
    order = slots(n_layers, repeats, layout)
    ind = np.asarray(indicators, dtype=float)
    if ind.shape != (len(order),):
        raise ValueError(f"indicator array of length {ind.shape[0]}; the {layout} layout with {n_layers} layers "
                         f"and {repeats} repeat(s) has {len(order)} slots")
    W = np.asarray(scales, dtype=float)
    if W.shape != (2 * n_layers, 2 * n_layers):
        raise ValueError(f"scaling matrix of shape {W.shape}; expected {(2 * n_layers, 2 * n_layers)}")
    if layout == "select":          # one hop per depth position: the model with the larger indicator
        chosen = [order[t] if ind[t] >= ind[t + 1] else order[t + 1] for t in range(0, len(order), 2)]
    else:
        chosen = [s for s, v in zip(order, ind) if v > 0]
    hops, prev = [], None
    for m, i in chosen:
        c = candidate(m, i, n_layers)
        hops.append(Hop(m, i, 1.0 if prev is None else float(W[prev, c])))
        prev = c
    return hops


# The keyword a decoder layer takes its KV cache under: `cache` in recent transformers 5.x,
# `past_key_values` in early 5.x (5.0), `past_key_value` in a few older model files.
CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value")


class _HopCache:
    """The run's KV cache (a `transformers.Cache`) as one hop sees it: `update` writes the hop's own
    slot, whatever layer_idx the shared layer passes; everything else goes to the cache unchanged
    (inside a Llama/Mistral decoder layer, `update` is the only call on the cache)."""

    def __init__(self, cache, index: int):
        self._cache, self._index = cache, index

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self._cache.update(key_states, value_states, self._index, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cache, name)


class HopLayer(nn.Module):
    """A shared decoder layer at one position of the path: scales its input, uses its own cache slot."""

    def __init__(self, layer: nn.Module, index: int, scale: float):
        super().__init__()
        self.layer, self.index, self.scale = layer, index, scale
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        for key in CACHE_KEYWORDS:      # passed on under the name it came in, which the layer accepts
            if kwargs.get(key) is not None:
                kwargs[key] = _HopCache(kwargs[key], self.index)
        if self.scale != 1.0:
            hidden_states = hidden_states * self.scale
        return self.layer(hidden_states, *args, **kwargs)


def path_config(config, layers_of, hops: List[Hop]):
    """A copy of a (text) config with `num_hidden_layers` (and `layer_types`) of the path."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = len(hops)
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list):
        cfg.layer_types = [layers_of[h.model][h.layer].attention_type if hasattr(
            layers_of[h.model][h.layer], "attention_type") else types[h.layer] for h in hops]
    return cfg


def hop_layers(layers_a, layers_b, hops: List[Hop]) -> nn.ModuleList:
    if not hops:
        raise ValueError("the DFS path is empty (no slot is on)")
    layers_of = (layers_a, layers_b)
    for h in hops:
        if not 0 <= h.layer < len(layers_of[h.model]):
            raise ValueError(f"hop {h}: model {'AB'[h.model]} has {len(layers_of[h.model])} layers")
    return nn.ModuleList(HopLayer(layers_of[h.model][h.layer], k, h.scale) for k, h in enumerate(hops))


def check_materialised(model):
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise RuntimeError(f"DFS model assembly left tensors unset: {meta[:3]}")
    return model


def build_dfs_model(model_a, model_b, hops: List[Hop]):
    """A causal LM of A's class whose decoder layers are `hops` over the two sources' layers (shared,
    not copied). Works with `generate` and the KV cache like any model of that class."""
    layers = hop_layers(model_a.model.layers, model_b.model.layers, hops)
    cfg = path_config(model_a.config, (model_a.model.layers, model_b.model.layers), hops)
    with torch.device("meta"):
        dfs = type(model_a)(cfg)
    dfs.model.layers = layers
    dfs.model.embed_tokens, dfs.model.norm = model_a.model.embed_tokens, model_a.model.norm
    dfs.model.rotary_emb, dfs.lm_head = model_a.model.rotary_emb, model_a.lm_head
    dfs.generation_config = copy.deepcopy(model_a.generation_config)
    return check_materialised(dfs).eval()


def export_state(model_a, model_b, hops: List[Hop]) -> Tuple[dict, object]:
    """(state dict, config) of the plain checkpoint equal to the DFS model: A's architecture with
    len(path) layers, each hop's output projections divided by the product of the scales so far."""
    states = (model_a.state_dict(), model_b.state_dict())
    out = {k: v for k, v in states[0].items() if not k.startswith("model.layers.")}
    cum = 1.0
    for k, h in enumerate(hops):
        cum *= h.scale
        if cum == 0:
            raise ValueError(f"hop {k}: the scales multiply to 0, which no plain checkpoint can express")
        lead = f"model.layers.{h.layer}."
        for name, t in states[h.model].items():
            if name.startswith(lead):
                rest = name[len(lead):]
                out[f"model.layers.{k}.{rest}"] = (t / cum).to(t.dtype) if rest in OUT_PROJECTIONS else t.clone()
    layers_of = (model_a.model.layers, model_b.model.layers)
    return out, path_config(model_a.config, layers_of, hops)


def save_dfs(model_a, model_b, hops: List[Hop], out_dir, tokenizer=None, force: bool = False):
    """Write the DFS model as a plain checkpoint (loads with stock transformers) into `out_dir`."""
    from .checkpoint import AtomicFolder
    state, cfg = export_state(model_a, model_b, hops)
    with torch.device("meta"):
        plain = type(model_a)(cfg)
    plain.load_state_dict(state, assign=True, strict=True)
    with AtomicFolder(out_dir, force=force) as tmp:
        plain.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir
