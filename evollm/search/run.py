"""One evolution run, start to end, in a run folder that survives `kill -9`.

    config -> sources loaded once -> optimizer asks genomes -> genome -> recipe -> merged in place
    -> task score -> candidates.jsonl (appended, flushed) -> optimizer told -> checkpoint.pkl
    ... -> best/recipe.yaml + best/model/ -> report.md + fitness.png

Run folder:
  config.yaml       the resolved config (`--resume` refuses a different one)
  candidates.jsonl  one line per candidate: genome, recipe parameters, score, timings, error
  checkpoint.pkl    after every generation, written atomically: optimizer (with its RNG), counters
  best/             recipe.yaml (mergekit-style) and model/ (a checkpoint), once the search ends
  fitness.png, report.md, report.json

Resume: the optimizer is restored from the last checkpoint and asked again; candidates that the
interrupted generation had already logged are not evaluated again (their genomes are checked to be
the ones asked). So a resumed run logs exactly the candidates, and finds exactly the best recipe, of
an uninterrupted run with the same config and seed. The checkpoint is a pickle: resume only run
folders you made.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np

from ..fsutil import AtomicFolder, RunLock, append_line, clean_stale, is_leftover, write_atomic
from . import optimizer as optim
from .config import ConfigError, dump_config, parse_config
from .report import failures, merge_failures, write_ps_dfs_report, write_report
from .space import ParamSpace

WORST = -1.0            # what the optimizer is told for a failed candidate (every real score is >= 0)
RUN_FILES = ("config.yaml", "run.lock", "candidates.jsonl", "checkpoint.pkl", "best", "fitness.png", "path.png",
             "report.md", "report.json", "ps", "dfs")


class RunFailed(RuntimeError):
    """The search cannot produce a result (e.g. every candidate of the first generation failed)."""


def read_candidates(path: Path) -> list:
    """Complete lines of candidates.jsonl. Only the last line may be cut (by a kill) and is dropped;
    a bad line before it means the file was damaged, and is an error naming the line."""
    out = []
    if path.exists():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise RunFailed(f"{path}: line {i + 1} is not a JSON record (the file was damaged); "
                                    "restore it, or start a new run folder") from None
    return out


def logged_candidates(out: Path) -> int:
    """How many candidates a run folder (or its PS+DFS phases) has logged."""
    return sum(len(read_candidates(p)) for p in (out / "candidates.jsonl", out / "ps" / "candidates.jsonl",
                                                  out / "dfs" / "candidates.jsonl"))


def stored_config(out: Path) -> dict:
    """The config a run folder was started with (errors name the folder and what is wrong)."""
    from ..recipe import read_yaml
    stored = out / "config.yaml"
    if not stored.exists():
        raise FileNotFoundError(f"--resume: {out} is not a run folder (no config.yaml)")
    try:
        return parse_config(read_yaml(stored, "run config", ConfigError), str(stored))
    except ConfigError as e:
        raise ConfigError(f"{e}\n  the run folder {out} cannot be resumed with this config.yaml; restore it, "
                          "or start a new run folder") from None


def has_results(out: Path) -> bool:
    """Whether a run folder holds anything a new run would destroy (logged candidates, a checkpoint,
    an export) in itself or its PS+DFS phases."""
    return logged_candidates(out) > 0 or any((out / sub / n).exists() for sub in ("", "ps", "dfs")
                                             for n in ("checkpoint.pkl", "best"))


class RunFolder:
    """A run folder's life: checked before anything loads; created (and locked) only once the run's
    inputs have loaded; removed again if the run stops before its first candidate is logged.

    A new run refuses a folder that holds results (`--resume` continues it) or files that are not a
    run's; one left by a run that stopped before its first candidate is reused. `--resume` takes the
    lock first, so a second process on the same folder fails at once, naming the holder."""

    def __init__(self, out: Path, cfg: dict | None, resume: bool, log=print):
        self.out, self.resume, self.log = Path(out), resume, log
        self.lock, self.created = RunLock(self.out), False
        if resume:
            old = stored_config(self.out)
            if cfg is not None and cfg != old:
                diff = sorted(k for k in set(cfg) | set(old) if cfg.get(k) != old.get(k))
                raise ConfigError(f"--resume: the config given differs from {self.out / 'config.yaml'} in {diff}; "
                                  "resume without --config, or start a new run folder")
            self.cfg = old
            self.lock.acquire()
            clean_stale(self.out)
            return
        self.cfg = cfg
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise FileExistsError(f"run folder {self.out} is a file; choose another --out")
        foreign = sorted(p.name for p in self.out.iterdir() if p.name not in RUN_FILES and not is_leftover(p.name))
        if foreign:
            raise FileExistsError(f"--out {self.out} already exists and holds files that are not a run's "
                                  f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); choose another --out")
        if has_results(self.out):
            raise FileExistsError(f"run folder {self.out} already exists; pass --resume to continue it, "
                                  "or choose another --out")
        self.lock.acquire()                 # fails if another process is starting a run in it right now
        self.lock.release()

    def create(self):
        """Make the folder (after the inputs loaded): config.yaml, the lock."""
        if self.resume or self.created:
            return
        reused = self.out.is_dir() and any(self.out.iterdir())
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        if reused:
            self.log(f"reusing {self.out}: it holds no candidates (a run that stopped before its first one)")
            for p in self.out.iterdir():
                if p.name != "run.lock":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        write_atomic(self.out / "config.yaml", dump_config(self.cfg))
        self.created = True

    def close(self, failed: bool):
        """Release the lock; after a failure before any candidate was logged, remove what was made."""
        removed = False
        if failed and self.created and logged_candidates(self.out) == 0:
            shutil.rmtree(self.out, ignore_errors=True)
            removed = True
        self.lock.release()
        return removed


def stage_folder(cfg: dict, out: Path) -> dict:
    """A PS+DFS phase's sub-folder: created with its config, or reopened (refusing a different config)."""
    if (out / "config.yaml").exists():
        old = stored_config(out)
        if old != cfg:
            raise ConfigError(f"{out / 'config.yaml'}: this phase was started with another config "
                              "(was the PS phase's output changed?)")
        clean_stale(out)
        return old
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", dump_config(cfg))
    return cfg


def make_space(cfg: dict, n_layers: int) -> ParamSpace:
    s = cfg["search"]
    return ParamSpace([m["name"] for m in cfg["models"]], {m["name"]: m["model"] for m in cfg["models"]},
                      cfg["base_model"], s["method"], s["params"], s["fixed"], s["layer_groups"], n_layers,
                      dtype="float32", out_dtype=cfg["out_dtype"])


def load_checkpoint(ckpt: Path) -> dict:
    try:
        with open(ckpt, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
        raise RunFailed(f"{ckpt}: cannot be read ({type(e).__name__}: {e}); the run folder cannot be resumed "
                        "from it: restore it, or start a new run folder") from None


def search(cfg: dict, out: Path, bench, space, fit_rows, progress=True, log=print) -> dict:
    """The evolution loop; returns the final state (best genome and score, history)."""
    s = cfg["search"]
    ckpt, cand_path = out / "checkpoint.pkl", out / "candidates.jsonl"
    if ckpt.exists():
        state = load_checkpoint(ckpt)
    else:
        x0 = space.initial()
        if s["init_from"]:
            from ..recipe import load_recipe
            x0 = np.clip(space.genome(load_recipe(s["init_from"])), 0.0, 1.0)
        state = {"generation": 0, "evaluated": 0, "history": [],
                 "optimizer": optim.make(s["optimizer"], x0, s["sigma"], s["popsize"], cfg["seed"])}
    logged = read_candidates(cand_path)
    if len(logged) < state["evaluated"]:
        raise RunFailed(f"{cand_path} has {len(logged)} candidates, its checkpoint {ckpt} counts {state['evaluated']} "
                        "(was the log truncated?); restore it, or start a new run folder")
    done = logged[:state["evaluated"]]
    # the interrupted generation's candidates are reused, up to the first that failed (run again: a
    # failure may have been the machine's, e.g. out of memory, and a failure is not a result)
    pending = logged[state["evaluated"]:]
    failed_at = next((i for i, r in enumerate(pending) if r.get("error")), len(pending))
    pending = pending[:failed_at]
    write_atomic(cand_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done + pending))
    budget = s["budget"]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=budget, initial=state["evaluated"], unit="cand", dynamic_ncols=True)
    best = max((r for r in done if r["score"] is not None), key=lambda r: r["score"], default=None)
    fd = os.open(cand_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while state["evaluated"] < budget:
            opt = state["optimizer"]
            generation = state["generation"] + 1                  # 1-based everywhere (log, report, plot)
            genomes = opt.ask()[:budget - state["evaluated"]]
            records = []
            for i, x in enumerate(genomes):
                n = state["evaluated"] + i
                params = space.decode(x)
                prev = pending[i] if i < len(pending) else None
                if prev is not None and prev["index"] == n and prev["genome"] == [float(v) for v in x]:
                    rec = prev                              # logged before the interruption
                else:
                    if prev is not None:
                        raise RunFailed(f"{cand_path}: candidate {n} in the log is not the one the restored "
                                        "optimizer asks for (was the config or code changed?)")
                    rec = {"index": n, "generation": generation, "genome": [float(v) for v in x],
                           "parameters": params, **bench.evaluate_candidate(params, fit_rows)}
                    append_line(fd, json.dumps(rec, ensure_ascii=False), cand_path)
                records.append(rec)
                if rec["score"] is not None and (best is None or rec["score"] > best["score"]):
                    best = rec
                if rec["error"]:
                    log(f"candidate {n}: {rec['error']}")
                if bar is not None:
                    bar.set_postfix_str(f"generation {generation}, best {best['score']:.1f}"
                                        if best else f"generation {generation}")
                    bar.update(1)
            pending = []
            scores = [r["score"] for r in records]
            ok = [v for v in scores if v is not None]
            if not ok and state["evaluated"] == 0:
                if bar is not None:
                    bar.close()
                first = records[0]
                raise RunFailed(f"every candidate of the first generation failed ({len(records)} of {len(records)}); "
                                f"the first, candidate {first['index']}: {first['error']}\n  the log is {cand_path}")
            state["history"].append({"generation": generation, "best": max(ok, default=None),
                                     "mean": float(np.mean(ok)) if ok else None,
                                     "best_so_far": best["score"] if best else None,
                                     "failed": len(scores) - len(ok)})
            if len(genomes) == s["popsize"]:          # a last, partial generation is not told
                opt.tell(genomes, [WORST if v is None else v for v in scores])
            state["generation"] += 1
            state["evaluated"] += len(genomes)
            write_atomic(ckpt, pickle.dumps(state))
    finally:
        os.close(fd)
    if bar is not None:
        bar.close()
    if best is None:
        raise RunFailed(f"every candidate failed; see the `error` fields in {cand_path}")
    state["best"] = best
    return state


def export_best(out: Path, bench, space, best: dict) -> Path:
    """best/recipe.yaml and best/model/ (the export the front end and search space make)."""
    with AtomicFolder(out / "best", force=True) as tmp:
        bench.export_best(space, best, tmp)
    return out / "best"


def evaluate_rows(out: Path, bench, space, fit_rows, test_rows, progress=True, log=print) -> dict:
    """The front end's reference models (sources, un-evolved merges, the search's initial point) and
    the exported best model, on the fitness rows and the held-out test rows."""
    models = dict(bench.reference_models(space))
    models["evolved (best/model)"] = lambda: bench.load_exported(out / "best" / "model")
    rows = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(models), unit="model", desc="scoring", dynamic_ncols=True, leave=False)
    for label, make in models.items():
        if bar is not None:
            bar.set_postfix_str(label)
        model = make()
        rows[label] = {"fitness": bench.score(model, fit_rows), "test": bench.score(model, test_rows)}
        msg = f"{label:<34} fitness {rows[label]['fitness']['score']:5.1f}   test {rows[label]['test']['score']:5.1f}"
        if bar is not None:
            bar.write(msg)
            bar.update(1)
        else:
            log(msg)
    if bar is not None:
        bar.close()
    return rows


def run(cfg: dict | None, out, resume: bool = False, progress: bool = True, log=print, benches=None) -> dict:
    """`evollm merge --config` (and `evovlm merge --config`, which passes its Workbench classes as
    `benches`, {"ps": ..., "dfs": ...}): search, export, report. Returns the report data.

    Everything the run reads (models, tokenizer, data) is loaded before the run folder is made, and a
    run that stops before its first candidate leaves no folder behind."""
    folder = RunFolder(Path(out), cfg, resume, log)
    failed = True
    try:
        if folder.cfg["search"]["space"] == "ps+dfs":
            data = run_ps_dfs(folder, progress, log, benches)
        else:
            data = run_one(folder.cfg, folder.out, progress, log, benches, folder.create)
        failed = False
        return data
    finally:
        if folder.close(failed):
            log(f"removed {folder.out}: the run stopped before its first candidate")


def run_ps_dfs(folder: RunFolder, progress, log, benches) -> dict:
    """PS, then DFS with A = the PS-merged model and B = `search.dfs.b`: two run folders, out/ps and
    out/dfs (each resumable), and a report.md with both tables."""
    import copy
    cfg, out = folder.cfg, folder.out
    ps = copy.deepcopy(cfg)
    ps["search"]["space"], ps["name"] = "ps", cfg["name"] + "-ps"

    def open_ps():
        folder.create()
        stage_folder(ps, out / "ps")
    ps_data = run_one(ps, out / "ps", progress, log, benches, open_ps)
    dfs = copy.deepcopy(cfg)
    d = dfs["search"]["dfs"]
    dfs["search"]["space"], dfs["name"], d["a"] = "dfs", cfg["name"] + "-dfs", "ps-merged"
    dfs["models"] = [{"model": str((out / "ps" / "best" / "model").resolve()), "name": "ps-merged"}] + \
        [m for m in cfg["models"] if m["name"] == d["b"]]
    dfs_data = run_one(dfs, out / "dfs", progress, log, benches, lambda: stage_folder(dfs, out / "dfs"))
    write_ps_dfs_report(out, cfg, ps_data, dfs_data)
    return {"ps": ps_data, "dfs": dfs_data, "rows": {**ps_data["rows"], **{
        "evolved PS+DFS (dfs/best/model)": dfs_data["rows"]["evolved (best/model)"]}},
        "baselines": ps_data["baselines"], "columns": ps_data["columns"],
        "failures": merge_failures(ps_data["failures"], dfs_data["failures"])}


def prepare(cfg: dict, benches, log):
    """Load everything the run reads (models, tokenizer, data): every input error surfaces here,
    before the run folder exists."""
    from .evaluate import Workbench
    t0 = time.time()
    n = len(cfg["models"])
    log(f"loading the base model, {n} source{'s' * (n != 1)}, the tokenizer and the task's data "
        f"({cfg['device']}, {cfg['dtype']}) ...")
    if cfg["search"]["space"] == "dfs":
        from .dfs_space import DfsWorkbench
        bench = (benches or {}).get("dfs", DfsWorkbench)(cfg)
        space = bench.make_space()
    else:
        bench = (benches or {}).get("ps", Workbench)(cfg)
        space = make_space(cfg, bench.n_layers)
    t = cfg["task"]
    fit_rows = bench.task.rows(t["fitness"], cfg["seed"])
    test_rows = bench.task.rows(t["test"], cfg["seed"])
    for split, rows in (("fitness", fit_rows), ("test", test_rows)):
        if not rows:
            raise ValueError(f"task.{split}.data: {t[split]['data']} has no items")
    return bench, space, fit_rows, test_rows, time.time() - t0


def run_one(cfg: dict, out: Path, progress, log, benches, create=lambda: None) -> dict:
    bench, space, fit_rows, test_rows, secs = prepare(cfg, benches, log)
    create()
    log(f"run {out}: {len(cfg['models'])} sources, {space.dim} genes, {cfg['search']['budget']} candidates on "
        f"{len(fit_rows)} fitness items ({cfg['device']}, loaded in {secs:.1f} s)")
    state = search(cfg, out, bench, space, fit_rows, progress, log)
    best = state["best"]
    log(f"best candidate {best['index']}: fitness {best['score']:.1f}; exporting to {out / 'best'}")
    export_best(out, bench, space, best)
    rows = evaluate_rows(out, bench, space, fit_rows, test_rows, progress, log)
    records = read_candidates(out / "candidates.jsonl")
    data = {"config": cfg["name"], "best": best, "history": state["history"], "rows": rows,
            "fitness_items": len(fit_rows), "test_items": len(test_rows),
            "baselines": bench.task.baselines(fit_rows, test_rows), "task": bench.task.name,
            "columns": [list(c) for c in bench.task.columns],
            "timing": timing(records), "failures": failures(records)}
    write_report(out, cfg, data, space, bench.task)
    return data


def timing(records) -> dict:
    ok = [r for r in records if r.get("merge_s") is not None and r.get("eval_s") is not None]
    if not ok:
        return {}
    return {"merge_s": float(np.mean([r["merge_s"] for r in ok])), "eval_s": float(np.mean([r["eval_s"] for r in ok])),
            "candidates": len(records)}
