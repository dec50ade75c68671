"""Candidate evaluation in memory: sources loaded once, each candidate merged in place into one
reusable model on the run's device, then scored by the task; nothing touches disk per candidate."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoint import Checkpoint, dtype_from_name
from ..hub import resolve_model
from ..inmemory import InMemoryMerger
from ..tasks import mgsm


def read_state(ref: str, shapes: dict) -> dict:
    """The tensors named in `shapes` (name -> shape, the model instance's) from a model folder or hub id."""
    ck = Checkpoint(resolve_model(ref), name=ref)
    missing = [n for n in shapes if n not in ck]
    if missing:
        raise ValueError(f"model {ref}: missing tensor(s) {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                         "that the base model has (not a fine-tune of the same base?)")
    for n, shape in shapes.items():
        if tuple(ck.shape(n)) != tuple(shape):
            raise ValueError(f"model {ref}: tensor {n} has shape {tuple(ck.shape(n))}, the base model's is "
                             f"{tuple(shape)} (a different vocabulary or architecture)")
    return {n: ck.get(n) for n in shapes}


class Workbench:
    """The base model instance, its tokenizer, and an in-memory merger over the config's sources."""

    def __init__(self, cfg: dict):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        device = cfg["device"]
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("config `device` is cuda, but torch sees no CUDA device")
        dtype = dtype_from_name(cfg["dtype"], "dtype")
        base_path = resolve_model(cfg["base_model"])
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg["tokenizer"]))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device).eval()
        self.shapes = {k: tuple(p.shape) for k, p in self.model.named_parameters()}
        self.base = read_state(cfg["base_model"], self.shapes)
        self.sources = {m["name"]: read_state(m["model"], self.shapes) for m in cfg["models"]}
        self.merger = InMemoryMerger(self.model, self.base, self.sources, device, store_dtype=dtype)
        self.n_layers = self.merger.n_layers
        self.seed = cfg["seed"]
        t = cfg["task"]
        self.gen = dict(max_new_tokens=t["max_new_tokens"], batch_size=t["batch_size"],
                        official=t["official_extraction"])

    def load(self, state: dict):
        """Put plain weights (a source, or an exported checkpoint) into the model."""
        with torch.no_grad():
            for k, p in self.model.named_parameters():
                p.copy_(state[k].to(p.dtype))
        return self.model

    def merge(self, method: str, fixed: dict, per_model: dict):
        """DARE masks depend on the run seed and the tensor name only (not on the candidate), so a
        candidate's score is the score of its exported recipe."""
        return self.merger.merge(method, fixed, per_model, seed=self.seed, candidate=0)

    def score(self, model, rows) -> dict:
        r = mgsm.evaluate(model, self.tokenizer, rows, **self.gen)
        return {"score": r["accuracy"], "number_correct": r["number_correct"], "lang_rate": r["lang_rate"],
                "examples": [i["output"] for i in r["items"][:2]]}

    def evaluate_candidate(self, method: str, fixed: dict, per_model: dict, rows) -> dict:
        """Merge, check, score; a candidate that raises (NaN/inf weights, out of memory, ...) gets
        score None and its error, and the run goes on."""
        t0 = time.perf_counter()
        out = {"merge_s": None, "eval_s": None, "error": None}
        try:
            model = self.merge(method, fixed, per_model)
            out["merge_s"] = round(time.perf_counter() - t0, 3)
            t1 = time.perf_counter()
            r = self.score(model, rows)
            out["eval_s"] = round(time.perf_counter() - t1, 3)
            out.update(score=r["score"], number_correct=r["number_correct"], lang_rate=r["lang_rate"])
        except (RuntimeError, ValueError, ArithmeticError, KeyError) as e:   # incl. torch.OutOfMemoryError
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            out.update(score=None, error=f"{type(e).__name__}: {str(e)[:500]}")
        return out

