"""Candidate evaluation in memory: sources loaded once, each candidate merged in place into one
reusable model on the run's device, then scored by the task; nothing touches disk per candidate."""

from __future__ import annotations

import time

import torch

from ..checkpoint import Checkpoint, dtype_from_name
from ..hub import batch_tokenizer, load_causal_lm, resolve_model
from ..merger import check_device
from ..inmemory import InMemoryMerger


def read_state(ref: str, shapes: dict, ckpt=None) -> dict:
    """The tensors named in `shapes` (name -> shape, the model instance's) from a model folder or hub id
    (or from `ckpt`, a Checkpoint look-alike for `ref`)."""
    ck = ckpt if ckpt is not None else Checkpoint(resolve_model(ref), name=ref)
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
    """The model instance, its tokenizer (or processor), the task and an in-memory merger over the
    config's sources. `evovlm` subclasses it for VLMs (`build`, `read_source`, `export`)."""

    def __init__(self, cfg: dict):
        from ..tasks import task_class
        device = cfg["device"]
        check_device(device, "config `device`")
        self.cfg, self.device, self.seed = cfg, device, cfg["seed"]
        dtype = dtype_from_name(cfg["dtype"], "dtype")
        self.model, self.processor, targets = self.build(cfg, dtype)
        self.targets = targets
        self.shapes = {k: tuple(t.shape) for k, t in targets.items()}
        self.base = read_state(cfg["base_model"], self.shapes)
        self.sources = {m["name"]: self.read_source(m["model"]) for m in cfg["models"]}
        self.merger = InMemoryMerger(self.model, self.base, self.sources, device, store_dtype=dtype, targets=targets)
        self.n_layers = self.merger.n_layers
        self.task = task_class(cfg["task"]["name"])(cfg["task"], self.processor)

    def build(self, cfg: dict, dtype):
        """(model on the device, tokenizer, name -> parameter tensor the merges write)."""
        tok = batch_tokenizer(cfg["tokenizer"])
        model = load_causal_lm(cfg["base_model"], dtype, cfg["device"])
        return model, tok, dict(model.named_parameters())

    def read_source(self, ref: str) -> dict:
        return read_state(ref, self.shapes)

    def read_exported(self, path) -> dict:
        return self.read_source(str(path))

    def load_exported(self, path):
        return self.load(self.read_exported(path))

    def export(self, recipe, out_dir):
        from ..merger import run_merge
        run_merge(recipe, out_dir, device=self.device, seed=self.seed, progress=False)

    def export_best(self, space, best: dict, folder):
        recipe = space.recipe(best["genome"])
        (folder / "recipe.yaml").write_text(recipe.to_yaml())
        self.export(recipe, folder / "model")

    def reference_models(self, space) -> dict:
        """label -> function putting that model's weights in place: the base and every source, the
        un-evolved merges at default settings, and the search's initial point."""
        names, report, s = list(self.sources), self.cfg["report"], self.cfg["search"]
        models = {}
        if report["sources"]:
            models["base"] = lambda: self.load(self.base)
            for n in names:
                models[n] = lambda n=n: self.load(self.sources[n])
        if report["baselines"]:
            for label, (method, fixed, per) in untuned(names).items():
                models[label] = lambda m=method, g=fixed, p=per: self.merge(m, g, p)
            models[f"{s['method']} at the initial point"] = lambda: self.candidate(space.decode(space.initial()))
        return models

    def load(self, state: dict):
        """Put plain weights (a source, or an exported checkpoint) into the model."""
        with torch.no_grad():
            for k, p in self.targets.items():
                p.copy_(state[k].to(p.dtype))
        return self.model

    def merge(self, method: str, fixed: dict, per_model: dict):
        """DARE masks depend on the run seed and the tensor name only (not on the candidate), so a
        candidate's score is the score of its exported recipe."""
        self.merger.merge(method, fixed, per_model, seed=self.seed, candidate=0)
        return self.model

    def score(self, model, rows) -> dict:
        return self.task.score(model, rows)

    def candidate(self, per_model: dict):
        """The model a decoded genome describes (here: the search's merge of per-model parameters)."""
        return self.merge(self.cfg["search"]["method"], self.cfg["search"]["fixed"], per_model)

    def evaluate_candidate(self, params: dict, rows) -> dict:
        """Build (merge), check, score; a candidate that raises (NaN/inf weights, out of memory, ...)
        gets score None and its error, and the run goes on."""
        t0 = time.perf_counter()
        out = {"merge_s": None, "eval_s": None, "error": None}
        try:
            model = self.candidate(params)
            out["merge_s"] = round(time.perf_counter() - t0, 3)
            t1 = time.perf_counter()
            r = self.score(model, rows)
            out["eval_s"] = round(time.perf_counter() - t1, 3)
            out.update({k: v for k, v in r.items() if k != "examples"})
        except (RuntimeError, ValueError, ArithmeticError, KeyError) as e:   # incl. torch.OutOfMemoryError
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            out.update(score=None, error=f"{type(e).__name__}: {str(e)[:500]}")
        return out


def untuned(names) -> dict:
    """Un-evolved merges at default settings: label -> (method, fixed parameters, per-model parameters)."""
    ones = "/".join("1" for _ in names)
    return {f"task arithmetic {ones}": ("task_arithmetic", {}, {n: {"weight": 1.0} for n in names}),
            "TIES d=0.5": ("ties", {}, {n: {"weight": 1.0, "density": 0.5} for n in names}),
            "DARE-TIES d=0.5": ("dare_ties", {}, {n: {"weight": 1.0, "density": 0.5} for n in names})}
