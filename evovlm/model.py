"""LLaVA-style models: find the language tower and map its tensor names to and from a standalone
causal LM's (transformers 5 layout: `model.*`, `lm_head.*`).

Handles LlavaForConditionalGeneration and LlavaNextForConditionalGeneration checkpoints in both
layouts seen on disk: the one transformers writes (`language_model.model.*`,
`language_model.lm_head.*`, `vision_tower.*`, `multi_modal_projector.*`, `image_newline`) and the
module layout of transformers 5 (`model.language_model.*`, `lm_head.*`, `model.vision_tower.*`, ...).
The miniature world's VLM (an open_clip tower converted to CLIP) is a LlavaForConditionalGeneration.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional

import torch

from evollm.checkpoint import Checkpoint, CheckpointError

#: name fragments of the parts of a LLaVA-style checkpoint that are not the language tower
VISION_KEYS = ("vision_tower", "visual", "vision_model")
PROJECTOR_KEYS = ("multi_modal_projector", "mm_projector", "image_newline")
# (VLM prefix, causal-LM prefix), most specific first
_TOWER_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                   ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def part(name: str) -> str:
    if any(k in name for k in VISION_KEYS):
        return "vision tower"
    if any(k in name for k in PROJECTOR_KEYS):
        return "projector"
    return "language tower"


def lm_name(vlm_name: str) -> Optional[str]:
    """The causal-LM name of a language-tower tensor; None for the vision tower and projector."""
    if part(vlm_name) != "language tower":
        return None
    for vp, lp in _TOWER_PREFIXES:
        if vlm_name.startswith(vp):
            return lp + vlm_name[len(vp):]
    raise CheckpointError(f"tensor {vlm_name}: not a known LLaVA language-tower name "
                          f"(expected one of the prefixes {[p for p, _ in _TOWER_PREFIXES]})")


def tower_names(names) -> Dict[str, str]:
    """causal-LM name -> VLM name for every language-tower tensor among `names`."""
    out: Dict[str, str] = {}
    for n in names:
        k = lm_name(n)
        if k is None:
            continue
        if k in out:
            raise CheckpointError(f"tensors {out[k]} and {n} both map to the language tower's {k}")
        out[k] = n
    return out


def is_vlm(ckpt: Checkpoint) -> bool:
    return "vision_config" in ckpt.config and "text_config" in ckpt.config


class TowerView:
    """A VLM checkpoint seen as its language tower: a read-only Checkpoint look-alike under causal-LM
    names, whose config is the VLM's `text_config`. With `rows`, the vocabulary tensors show only
    their first `rows` rows (the rows a causal LM with a smaller vocabulary shares with the VLM)."""

    def __init__(self, vlm: Checkpoint, rows: Optional[int] = None):
        self.vlm, self.name, self.path = vlm, vlm.name, vlm.path
        self.map = tower_names(vlm.names())
        self.full_rows = text_vocab(vlm.config)
        self.rows = rows if rows is not None else self.full_rows
        if self.rows > self.full_rows:
            raise CheckpointError(f"model {vlm.name}: asked for {self.rows} vocabulary rows, it has {self.full_rows}")
        self.config = copy.deepcopy(vlm.config["text_config"])
        self.config["vocab_size"] = self.rows

    def names(self):
        return list(self.map)

    def __contains__(self, name: str) -> bool:
        return name in self.map

    def _sliced(self, name: str) -> bool:
        return name in VOCAB_TENSORS and self.rows != self.full_rows

    def shape(self, name: str):
        s = self.vlm.shape(self.map[name])
        return (self.rows, *s[1:]) if self._sliced(name) else s

    def dtype(self, name: str):
        return self.vlm.dtype(self.map[name])

    def get(self, name: str) -> torch.Tensor:
        t = self.vlm.get(self.map[name])
        return t[:self.rows] if self._sliced(name) else t


def text_vocab(cfg: dict) -> int:
    tc = cfg.get("text_config") or cfg
    if "vocab_size" not in tc:
        raise CheckpointError("config has no text_config.vocab_size")
    return int(tc["vocab_size"])


class LanguageTower(torch.nn.Module):
    """A loaded LLaVA model's language tower under a causal LM's module names (`model.*`, `lm_head.*`),
    sharing the VLM's modules: merges write into the VLM, DFS paths read its layers."""

    def __init__(self, vlm):
        super().__init__()
        self.model = vlm.model.language_model
        self.lm_head = vlm.lm_head
        self.config = vlm.config.text_config
