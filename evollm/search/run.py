"""One evolution run, start to end, in a run folder that survives `kill -9` (see `runfolder`).

    config -> workbench (sources loaded once; its search space) -> optimizer asks genomes
    -> genome -> candidate (merged in place, or a DFS path) -> task score -> candidates.jsonl
    -> optimizer told -> checkpoint.pkl ... -> best/recipe.yaml + best/model/
    -> reference models and the best on the fitness and held-out test rows -> report.md + fitness.png

Resume: the optimizer is restored from the last checkpoint and asked again; candidates that the
interrupted generation had already logged are not evaluated again (their genomes are checked to be
the ones asked). So a resumed run logs exactly the candidates, and finds exactly the best recipe, of
an uninterrupted run with the same config and seed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..fsutil import AtomicFolder
from . import optimizer as optim
from .config import ModelRef, RunConfig
from .report import failures, merge_failures, write_model_card, write_ps_dfs_report, write_report
from .runfolder import (CandidateLog, RunFailed, RunFolder, load_checkpoint,  # noqa: F401 (RunFailed)
                        logged_candidates, read_candidates, save_checkpoint, stage_folder)
from .livelog import best_recipe_text, check as check_live, open_live
from .pool import LocalPool, with_threads

WORST = -1.0            # what the optimizer is told for a failed candidate (every real score is >= 0)


def search(cfg: RunConfig, out: Path, pool, progress=True, log=print) -> dict:
    """The evolution loop (the only one: runs, the world's probes and the tests go through it); `pool`
    scores the candidates (pool.py). Returns the final state (best genome and score, history)."""
    s, space = cfg.search, pool.space
    ckpt, cand_path = out / "checkpoint.pkl", out / "candidates.jsonl"
    if ckpt.exists():
        state = load_checkpoint(ckpt)
    else:
        x0 = space.initial()
        if s.init_from:
            from ..recipe import load_recipe
            x0 = np.clip(space.genome(load_recipe(s.init_from)), 0.0, 1.0)
        state = {"generation": 0, "evaluated": 0, "history": [],
                 "optimizer": optim.make(s.optimizer, x0, s.sigma, s.popsize, cfg.seed)}
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
    if cfg.task.fitness.schedule is not None:
        pending = []                # a race's decisions depend on the whole generation: it is raced again
    budget = s.budget
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=budget, initial=state["evaluated"], unit="cand", dynamic_ncols=True)
    n_items = pool.task.fitness_items
    best = max((r for r in done if r["score"] is not None and r.get("items", n_items) == n_items),
               key=lambda r: r["score"], default=None)
    cand_log = CandidateLog(cand_path, done + pending)
    live = open_live(cfg, out, state["evaluated"])
    try:
        while state["evaluated"] < budget:
            opt = state["optimizer"]
            generation = state["generation"] + 1                  # 1-based everywhere (log, report, plot)
            genomes = opt.ask()[:budget - state["evaluated"]]
            asked = [{"index": state["evaluated"] + i, "generation": generation, "genome": [float(v) for v in x],
                      "parameters": space.decode(x)} for i, x in enumerate(genomes)]
            for prev, rec in zip(pending, asked):               # logged before the interruption
                if prev["index"] != rec["index"] or prev["genome"] != rec["genome"]:
                    raise RunFailed(f"{cand_path}: candidate {rec['index']} in the log is not the one the restored "
                                    "optimizer asks for (was the config or code changed?)")
            fresh = score_generation(cfg, pool, [(r["index"], r["parameters"], None) for r in asked[len(pending):]])
            records = []
            for i, rec in enumerate(asked):
                if i < len(pending):
                    rec = pending[i]
                else:
                    rec = {**rec, **next(fresh)}
                    cand_log.append(rec)
                records.append(rec)
                if live is not None:
                    live.candidate(rec)
                complete = rec.get("items", n_items) == n_items      # raced out early: not a best
                if complete and rec["score"] is not None and (best is None or rec["score"] > best["score"]):
                    best = rec
                if rec["error"]:
                    log(f"candidate {rec['index']}: {rec['error']}")
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
                                     "std": float(np.std(ok)) if ok else None,
                                     "best_so_far": best["score"] if best else None,
                                     "failed": len(scores) - len(ok)})
            if live is not None:
                live.generation(state["history"][-1], scores, state["evaluated"] + len(genomes) - 1,
                                best_recipe_text(space, cfg, best["parameters"]) if best else None)
            if len(genomes) == s.popsize:          # a last, partial generation is not told
                opt.tell(genomes, [WORST if v is None else v for v in scores])
            state["generation"] += 1
            state["evaluated"] += len(genomes)
            save_checkpoint(ckpt, state)
    finally:
        cand_log.close()
        if live is not None:
            live.close()
    if bar is not None:
        bar.close()
    if best is None:
        raise RunFailed(f"every candidate failed; see the `error` fields in {cand_path}")
    state["best"] = best
    return state


def score_generation(cfg: RunConfig, pool, jobs):
    """A generation's fresh candidates' records, in order: each on every fitness item, or raced
    (race.py) when the config has a fitness schedule."""
    schedule = cfg.task.fitness.schedule
    if schedule is None:
        return pool.evaluate(jobs)
    from .race import race
    select = schedule.select or max(1, cfg.search.popsize // 2)
    return iter(race(pool.evaluate, jobs, pool.task.fitness_items, schedule, select, cfg.seed))


def export_best(out: Path, pool, best: dict, cfg: RunConfig) -> Path:
    """best/recipe.yaml and best/model/ (the export the workbench makes for its search space), with the
    model's card (report.py writes it again with the report's table)."""
    with AtomicFolder(out / "best", force=True) as tmp:
        pool.export_best(best, tmp)
    write_model_card(out, cfg, pool.space, best)
    return out / "best"


def evaluate_rows(out: Path, pool, progress=True, log=print) -> dict:
    """The workbench's reference models (sources, un-evolved merges, the search's initial point) and
    the exported best model, on the fitness rows and the held-out test rows."""
    rows = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(pool.labels), unit="model", desc="scoring", dynamic_ncols=True, leave=False)
    for label, scored in pool.score_models(out / "best" / "model"):
        rows[label] = scored
        msg = f"{label:<34} fitness {scored['fitness']['score']:5.1f}   test {scored['test']['score']:5.1f}"
        if bar is not None:
            bar.write(msg)
            bar.update(1)
        else:
            log(msg)
    if bar is not None:
        bar.close()
    return rows


def run(cfg: RunConfig | None, out, resume: bool = False, progress: bool = True, log=print,
        execution: dict = None, budget: int | None = None) -> dict:
    """`evollm merge --config` (and `evovlm merge --config`): search, export, report. Returns the report
    data. The task the config names picks the workbench (the model kind) for the config's space;
    `execution` (e.g. {"workers": 2}) overrides how it runs, also for a resumed run; `budget` replaces
    the config's `search.budget` (a resume may raise it, also for a finished run).

    Everything the run reads (models, tokenizer, data) is loaded before the run folder is made, and a
    run that stops before its first candidate leaves no folder behind."""
    folder = RunFolder(Path(out), cfg, resume, log, execution, budget)
    failed = True
    try:
        folder.cfg = with_threads(folder.cfg)
        if folder.cfg.search.space == "ps+dfs":
            data = run_ps_dfs(folder, progress, log)
        else:
            data = run_one(folder.cfg, folder.out, progress, log, folder.create)
        failed = False
        return data
    finally:
        if folder.close(failed):
            log(f"removed {folder.out}: the run stopped before its first candidate")


def ps_dfs_phases(cfg: RunConfig, out: Path) -> tuple:
    """PS+DFS's two phase configs: PS over every source; DFS with A = the PS phase's exported model
    and B = `search.dfs.b`."""
    d = cfg.search.dfs
    ps = cfg.phase("ps", cfg.name + "-ps")
    dfs = dataclasses.replace(
        cfg.phase("dfs", cfg.name + "-dfs", dfs=dataclasses.replace(d, a="ps-merged")),
        models=(ModelRef(str((out / "ps" / "best" / "model").resolve()), "ps-merged"),
                *(m for m in cfg.models if m.name == d.b)))
    return ps, dfs


def run_ps_dfs(folder: RunFolder, progress, log) -> dict:
    """PS, then DFS: two run folders, out/ps and out/dfs (each resumable), and a report.md with both tables."""
    cfg, out = folder.cfg, folder.out
    ps, dfs = ps_dfs_phases(cfg, out)

    def open_ps():
        folder.create()
        stage_folder(ps, out / "ps")
    ps_data = run_one(ps, out / "ps", progress, log, open_ps)
    dfs_data = run_one(dfs, out / "dfs", progress, log, lambda: stage_folder(dfs, out / "dfs"))
    write_ps_dfs_report(out, cfg, ps_data, dfs_data)
    return {"ps": ps_data, "dfs": dfs_data, "rows": {**ps_data["rows"], **{
        "evolved PS+DFS (dfs/best/model)": dfs_data["rows"]["evolved (best/model)"]}},
        "baselines": ps_data["baselines"], "columns": ps_data["columns"],
        "failures": merge_failures(ps_data["failures"], dfs_data["failures"])}


def open_pool(cfg: RunConfig, log):
    """Where the run's candidates are scored: this process, or `search.workers` Ray actors."""
    if cfg.search.workers > 1 or cfg.search.ray_address:
        from .raypool import RayPool
        return RayPool(cfg, log)
    return LocalPool.open(cfg, log)


def run_one(cfg: RunConfig, out: Path, progress, log, create=lambda: None) -> dict:
    done = out / "report.json"              # written last: the run (phase) finished, nothing is left to do
    if done.exists():
        if logged_candidates(out) >= cfg.search.budget:
            log(f"{out}: finished earlier (its report.json is complete); nothing is recomputed")
            return json.loads(done.read_text())
        done.unlink()                       # a resume raised the budget: search on, export and report again
    check_live(cfg.search.log)              # a missing package is named before anything loads
    with open_pool(cfg, log) as pool:
        space, task = pool.space, pool.task
        create()
        workers = f", {pool.workers} workers" if pool.workers > 1 else ""
        log(f"run {out}: {len(cfg.models)} sources, {space.dim} genes, {cfg.search.budget} candidates on "
            f"{task.fitness_items} fitness items ({cfg.device}{workers}, loaded in {pool.load_s:.1f} s)")
        state = search(cfg, out, pool, progress, log)
        best = state["best"]
        log(f"best candidate {best['index']}: fitness {best['score']:.1f}; exporting to {out / 'best'}")
        export_best(out, pool, best, cfg)
        rows = evaluate_rows(out, pool, progress, log)
    records = read_candidates(out / "candidates.jsonl")
    data = {"config": cfg.name, "best": best, "history": state["history"], "rows": rows,
            "fitness_items": task.fitness_items, "test_items": task.test_items,
            "baselines": task.baselines, "task": task.name, "columns": task.columns, "workers": pool.workers,
            "timing": timing(records, task.fitness_items), "failures": failures(records)}
    write_report(out, cfg, data, space, task)
    return data


def timing(records, n_items: int) -> dict:
    """Mean seconds per candidate; the fitness items and generated tokens the candidates used, against a
    run that scores every candidate on every item (its tokens estimated from each candidate's per item)."""
    ok = [r for r in records if r.get("merge_s") is not None and r.get("eval_s") is not None]
    if not ok:
        return {}
    out = {"merge_s": float(np.mean([r["merge_s"] for r in ok])), "eval_s": float(np.mean([r["eval_s"] for r in ok])),
           "candidates": len(records)}
    counted = [r for r in records if r.get("items")]
    if counted:
        out.update(items=sum(r["items"] for r in counted), full_items=len(counted) * n_items,
                   tokens=sum(r["tokens"] for r in counted),
                   full_tokens=round(sum(r["tokens"] / r["items"] * n_items for r in counted)))
    return out
