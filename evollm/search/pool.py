"""Where a run's candidates are scored: in this process (`LocalPool`, `search.workers: 1`) or on a pool
of Ray actors (`RayPool`, `search.workers: N` or `--workers N`), each holding a `LocalPool` of its own.

Both offer the same four things to the run: `space` and `task` (what the driver needs to ask genomes and
write the report), `evaluate(jobs)` (score records in the jobs' order), `export_best(best, folder)` and
`score_models(exported)` (the report's rows in the workbench's order). The driver keeps the optimizer,
the log, the checkpoint and the report; a worker only turns recipes into scores. A candidate's arithmetic
does not depend on where it runs: every worker loads the same inputs, computes with the run's
`search.threads` CPU threads, and a workbench's candidate does not depend on what it scored before.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

EVOLVED = "evolved (best/model)"


def prepare(cfg, log):
    """Load everything a run reads (models, tokenizer, data) with the run's CPU threads: every input
    error surfaces here. Returns (workbench, fitness rows, test rows, seconds)."""
    import torch

    from .workbench import open_workbench
    t0 = time.time()
    if cfg.search.threads:                  # before any model exists: every candidate computes with them
        torch.set_num_threads(cfg.search.threads)
    n = len(cfg.models)
    log(f"loading the base model, {n} source{'s' * (n != 1)}, the tokenizer and the task's data "
        f"({cfg.device}, {cfg.dtype}, {torch.get_num_threads()} CPU threads) ...")
    bench = open_workbench(cfg)
    t = cfg.task
    fit_rows = bench.task.rows(t.fitness, cfg.seed)
    test_rows = bench.task.rows(t.test, cfg.seed)
    for split, rows in (("fitness", fit_rows), ("test", test_rows)):
        if not rows:
            raise ValueError(f"task.{split}.data: {getattr(t, split).data} has no items")
    bench.ready(fit_rows, log)
    return bench, fit_rows, test_rows, time.time() - t0


def task_view(task, fit_rows, test_rows) -> SimpleNamespace:
    """What the report needs of a task, as plain data (it travels from a worker to the driver)."""
    return SimpleNamespace(name=task.name, columns=[list(c) for c in task.columns], score_label=task.score_label,
                           note=task.note, baselines=task.baselines(fit_rows, test_rows),
                           fitness_items=len(fit_rows), test_items=len(test_rows))


def control_rows(task, fit_rows, test_rows, seed: int) -> dict:
    """The report's control rows: label -> (fitness rows, test rows) the evolved model is also scored on,
    as the task defines them (`task.controls(rows, seed)` -> {name: altered rows}, e.g. every image
    replaced by another item's: a model that uses the images must lose there)."""
    make = getattr(task, "controls", None)
    if make is None:
        return {}
    fit, test = make(fit_rows, seed), make(test_rows, seed)
    return {f"{name} (evolved)": (fit[name], test[name]) for name in fit}


class LocalPool:
    """The run's own process scores every candidate (no Ray)."""
    workers = 1

    def __init__(self, bench, fit_rows, test_rows, load_s: float = 0.0):
        self.bench, self.fit_rows, self.test_rows, self.load_s = bench, fit_rows, test_rows, load_s
        self.space = bench.space
        self.task = task_view(bench.task, fit_rows, test_rows)
        self.controls = control_rows(bench.task, fit_rows, test_rows, bench.seed)
        self.labels = list(self.models(None))
        self._export = (None, None)        # (folder, model): the export scored for its own and its control rows

    @classmethod
    def open(cls, cfg, log):
        return cls(*prepare(cfg, log))

    def evaluate(self, jobs):
        """jobs: [(candidate index, decoded parameters, fitness item indices or None: every item)] -> their
        score records, in order, one at a time."""
        for _, params, items in jobs:
            yield self.bench.evaluate_candidate(params, self.rows_of(items))

    def rows_of(self, items):
        return self.fit_rows if items is None else [self.fit_rows[i] for i in items]

    def export_best(self, best: dict, folder):
        self.bench.export_best(best, folder)

    def models(self, exported) -> dict:
        """The report's models: label -> function making it (the workbench's references, then the export)."""
        models = dict(self.bench.reference_models())
        models[EVOLVED] = lambda: self.bench.load_exported(exported)
        for label in self.controls:
            models[label] = models[EVOLVED]
        return models

    def score_one(self, label: str, exported) -> dict:
        if label == EVOLVED or label in self.controls:      # the export is loaded once for all its rows
            if self._export[0] != str(exported):
                self._export = (None, None)                  # the previous one goes before the next loads
                self._export = (str(exported), self.bench.load_exported(exported))
            model = self._export[1]
        else:
            model = self.models(exported)[label]()
        fit, test = self.controls.get(label, (self.fit_rows, self.test_rows))
        return {"fitness": self.bench.score(model, fit), "test": self.bench.score(model, test)}

    def score_models(self, exported):
        """(label, rows) for every model of the report, in order."""
        for label in self.models(exported):
            yield label, self.score_one(label, exported)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def with_threads(cfg):
    """The config with `search.threads` fixed: if unset, torch's default here (this machine's cores), for
    any number of workers, so that a run gives the same bits with any worker count; a run folder records
    the count, so a resume (with any worker count) computes with it too."""
    import dataclasses

    import torch
    if cfg.search.threads:
        return cfg
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, threads=torch.get_num_threads()))
