"""Workbenches: what a run needs to turn a genome into a scored model, one per (model kind, search space).

Every workbench follows one small protocol (`Workbench`): it owns its search space (`space`: `dim`,
`initial()`, `decode(genome)`, for PS also `genome(recipe)`), holds the task (`task`), and offers
`evaluate_candidate(params, rows)`, `score(model, rows)`, `reference_models()`, `export_best(best,
folder)` and `load_exported(path)`. The run never asks which one it holds.

`PsWorkbench` (here): the parameter space; sources loaded once, each candidate merged in place into one
reusable model on the run's device, nothing on disk per candidate. `DfsWorkbench` (dfs_space.py): the
data-flow space. The VLM front end subclasses both for a VLM's language tower. A task names the
workbenches that score it (`Task.workbenches`, space -> "module:class"), so the core names no front end.
"""

from __future__ import annotations

import importlib
import time

import torch

from ..checkpoint import Checkpoint, dtype_from_name
from ..engine.disk import check_device
from ..engine.memory import InMemoryMerger
from ..engine.plan import decoder_layers
from ..hub import batch_tokenizer, load_causal_lm, resolve_model

#: the workbenches of a task that names none: causal LMs
CAUSAL_LM = {"ps": "evollm.search.workbench:PsWorkbench", "dfs": "evollm.search.dfs_space:DfsWorkbench"}


def open_workbench(cfg):
    """The workbench the config's task names for the config's space, built (sources loaded)."""
    from ..tasks import task_class
    target = getattr(task_class(cfg.task.name), "workbenches", CAUSAL_LM)[cfg.search.space]
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(cfg)


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
    """The protocol, and what every workbench shares: the device check, the task, scoring, and
    candidate evaluation that turns a failure into a logged error."""
    space = None

    def __init__(self, cfg):
        check_device(cfg.device, "config `device`")
        self.cfg, self.device, self.seed = cfg, cfg.device, cfg.seed
        self.dtype = dtype_from_name(cfg.dtype, "dtype")

    def open_task(self, processor):
        from ..tasks import task_class
        self.processor = processor
        self.task = task_class(self.cfg.task.name)(self.cfg.task, processor)

    def ready(self, rows, log=print):
        """Called once the fitness rows are loaded, before the first candidate (workbenches plan their
        memory here)."""
        return None

    def plan(self, rows, log, **shapes):
        """The memory plan (`memplan.plan_memory` of `shapes`) for these fitness rows, logged, and the
        task's decoding batch capped by it; None for a task that does not say its prompts' lengths."""
        from ..memplan import device_budget, plan_memory
        longest = getattr(self.task, "longest_prompt", None)
        if longest is None:
            return None
        cfg = self.cfg
        plan = plan_memory(device=cfg.device, budget=device_budget(cfg.device, cfg.device_memory),
                           max_tokens=longest(rows) + cfg.task.max_new_tokens, batch=self.task.batch_size, **shapes)
        log(plan.describe())
        self.task.batch_size = plan.batch
        return plan

    # -- what each workbench defines
    def candidate(self, params: dict):
        """The model a decoded genome describes."""
        raise NotImplementedError

    def reference_models(self) -> dict:
        """label -> function returning a model to score beside the evolved one."""
        raise NotImplementedError

    def export_best(self, best: dict, folder):
        raise NotImplementedError

    def load_exported(self, path):
        raise NotImplementedError

    # -- shared
    def score(self, model, rows) -> dict:
        return self.task.score(model, rows)

    def evaluate_candidate(self, params: dict, rows) -> dict:
        """Build, check, score; a candidate that raises (NaN/inf weights, out of memory, ...) gets score
        None and its error, and the run goes on."""
        from ..generate import GENERATED
        t0 = time.perf_counter()
        out = {"merge_s": None, "eval_s": None, "error": None, "items": len(rows), "tokens": 0}
        try:
            model = self.candidate(params)
            out["merge_s"] = round(time.perf_counter() - t0, 3)
            t1, tokens = time.perf_counter(), GENERATED["tokens"]
            r = self.score(model, rows)
            out["eval_s"] = round(time.perf_counter() - t1, 3)
            out["tokens"] = GENERATED["tokens"] - tokens
            out.update({k: v for k, v in r.items() if k != "examples"})
        except (RuntimeError, ValueError, ArithmeticError, KeyError) as e:   # incl. torch.OutOfMemoryError
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            out.update(score=None, error=f"{type(e).__name__}: {str(e)[:500]}")
        return out


class PsWorkbench(Workbench):
    """Parameter space: the model instance, its tokenizer (or processor), an in-memory merger over the
    config's sources, and the ParamSpace of the config's method and parameters."""

    def __init__(self, cfg):
        from .space import ParamSpace
        super().__init__(cfg)
        model, processor, targets = self.build(cfg, self.dtype)
        self.model, self.targets = model, targets
        self.shapes = {k: tuple(t.shape) for k, t in targets.items()}
        self.base = read_state(cfg.base_model, self.shapes)
        self.sources = {m.name: self.read_source(m.model) for m in cfg.models}
        self.n_layers = decoder_layers(targets)[1]
        self.merger = None          # made by `ready`, where the memory plan says the sources live
        self.open_task(processor)
        self.space = ParamSpace.of(cfg, self.n_layers)

    def ready(self, rows, log=print):
        """The memory plan for these fitness rows (logged), then the in-memory merger over the sources
        held where it says, and the task's decoding batch no larger than what fits."""
        from ..memplan import kv_bytes_per_token
        cfg, params = self.cfg, list(self.targets.values())
        esize = torch.tensor([], dtype=self.dtype).element_size()
        plan = self.plan(rows, log, model_bytes=sum(p.numel() * p.element_size() for p in self.model.parameters()),
                         largest_tensor=max(p.numel() for p in params), n_inputs=len(self.sources) + 1,
                         store_bytes_per_param=esize, model_params=sum(p.numel() for p in params),
                         kv_per_token=kv_bytes_per_token(self.model.config.to_dict(), esize))
        host = plan is not None and plan.sources_on == "host"
        from ..kernels import get_method
        tv = None if get_method(self.space.method).task_vectors is not None else False    # else: hold the sources
        self.merger = InMemoryMerger(self.model, self.base, self.sources, cfg.device, store_dtype=self.dtype,
                                     task_vectors=tv,
                                     targets=self.targets, refs=cfg.refs, base_ref=cfg.base_model,
                                     store_device="cpu" if host else None)
        return plan

    def build(self, cfg, dtype):
        """(model on the device, tokenizer, name -> parameter tensor the merges write)."""
        tok = batch_tokenizer(cfg.tokenizer)
        model = load_causal_lm(cfg.base_model, dtype, cfg.device)
        return model, tok, dict(model.named_parameters())

    def read_source(self, ref: str) -> dict:
        return read_state(ref, self.shapes)

    def load_exported(self, path):
        return self.load(self.read_source(str(path)))

    def export(self, recipe, out_dir):
        from ..engine.disk import run_merge
        run_merge(recipe, out_dir, device=self.device, seed=self.seed, progress=False)

    def export_best(self, best: dict, folder):
        from ..card import portable_recipe
        recipe = self.space.recipe(best["genome"])
        names = {m.model: m.name for m in self.cfg.models}      # no path of this machine in the export
        (folder / "recipe.yaml").write_text(portable_recipe(recipe, names).to_yaml())
        self.export(recipe, folder / "model")

    def reference_models(self) -> dict:
        """The base and every source, the un-evolved merges at default settings, and the search's
        initial point."""
        names, report = list(self.sources), self.cfg.report
        models = {}
        if report.sources:
            models["base"] = lambda: self.load(self.base)
            for n in names:
                models[n] = lambda n=n: self.load(self.sources[n])
        if report.baselines:
            for label, (method, fixed, per) in untuned(names).items():
                models[label] = lambda m=method, g=fixed, p=per: self.merge(m, g, p)
            models[f"{self.space.method} at the initial point"] = \
                lambda: self.candidate(self.space.decode(self.space.initial()))
        return models

    def load(self, state: dict):
        """Put plain weights (a source, or an exported checkpoint) into the model."""
        with torch.no_grad():
            for k, p in self.targets.items():
                p.copy_(state[k].to(p.dtype))
        return self.model

    def merge(self, method: str, fixed: dict, per_model: dict):
        """A merge of every source onto the base (the un-evolved reference merges)."""
        self.merger.merge(method, fixed, per_model, seed=self.seed, candidate=0)
        return self.model

    def candidate(self, per_model: dict):
        """The candidate's recipe (the space's method and fixed parameters, these per-model parameters)
        merged in memory: the recipe `export_best` writes and exports for the same parameters, planned
        and executed by the same engine with the same random streams (the run seed; the candidate number
        does not enter the masks), so a candidate's score is the score of its exported recipe."""
        self.merger.merge_recipe(self.space.recipe_of(per_model), seed=self.seed, candidate=0)
        return self.model


def untuned(names) -> dict:
    """Un-evolved merges at default settings: label -> (method, fixed parameters, per-model parameters)."""
    ones = "/".join("1" for _ in names)
    return {f"task arithmetic {ones}": ("task_arithmetic", {}, {n: {"weight": 1.0} for n in names}),
            "TIES d=0.5": ("ties", {}, {n: {"weight": 1.0, "density": 0.5} for n in names}),
            "DARE-TIES d=0.5": ("dare_ties", {}, {n: {"weight": 1.0, "density": 0.5} for n in names})}
