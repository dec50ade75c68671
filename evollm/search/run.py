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
import time
from pathlib import Path

import numpy as np

from ..checkpoint import AtomicFolder
from . import optimizer as optim
from .config import ConfigError, dump_config, parse_config
from .space import ParamSpace

WORST = -1.0            # what the optimizer is told for a failed candidate (every real score is >= 0)


def _write_atomic(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_candidates(path: Path) -> list:
    """Complete lines of candidates.jsonl (a line cut by a kill is dropped)."""
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def open_run(cfg: dict | None, out: Path, resume: bool) -> dict:
    """Create the run folder (never over an existing one) or reopen it for `--resume`."""
    stored = out / "config.yaml"
    if resume:
        if not stored.exists():
            raise FileNotFoundError(f"--resume: {out} is not a run folder (no config.yaml)")
        import yaml
        old = parse_config(yaml.safe_load(stored.read_text()), str(stored))
        if cfg is not None and cfg != old:
            diff = sorted(k for k in set(cfg) | set(old) if cfg.get(k) != old.get(k))
            raise ConfigError(f"--resume: the config given differs from {stored} in {diff}; "
                              "resume without --config, or start a new run folder")
        return old
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"run folder {out} already exists; pass --resume to continue it, "
                              "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(stored, dump_config(cfg).encode())
    return cfg


def make_space(cfg: dict, n_layers: int) -> ParamSpace:
    s = cfg["search"]
    return ParamSpace([m["name"] for m in cfg["models"]], {m["name"]: m["model"] for m in cfg["models"]},
                      cfg["base_model"], s["method"], s["params"], s["fixed"], s["layer_groups"], n_layers,
                      dtype="float32", out_dtype=cfg["out_dtype"])


def search(cfg: dict, out: Path, bench, space, fit_rows, progress=True, log=print) -> dict:
    """The evolution loop; returns the final state (best genome and score, history)."""
    s = cfg["search"]
    ckpt, cand_path = out / "checkpoint.pkl", out / "candidates.jsonl"
    if ckpt.exists():
        with open(ckpt, "rb") as f:
            state = pickle.load(f)
    else:
        x0 = space.initial()
        if s["init_from"]:
            from ..recipe import load_recipe
            x0 = np.clip(space.genome(load_recipe(s["init_from"])), 0.0, 1.0)
        state = {"generation": 0, "evaluated": 0, "history": [],
                 "optimizer": optim.make(s["optimizer"], x0, s["sigma"], s["popsize"], cfg["seed"])}
    logged = read_candidates(cand_path)
    # keep the checkpointed candidates and those of the interrupted generation (reused below)
    _write_atomic(cand_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in logged).encode())
    done = logged[:state["evaluated"]]
    pending = logged[state["evaluated"]:]
    budget = s["budget"]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=budget, initial=state["evaluated"], unit="cand", dynamic_ncols=True)
    best = max((r for r in done if r["score"] is not None), key=lambda r: r["score"], default=None)
    with open(cand_path, "a", encoding="utf-8") as f:
        while state["evaluated"] < budget:
            opt = state["optimizer"]
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
                        raise RuntimeError(f"{cand_path}: candidate {n} in the log is not the one the restored "
                                           "optimizer asks for (was the config or code changed?)")
                    rec = {"index": n, "generation": state["generation"], "genome": [float(v) for v in x],
                           "parameters": params, **bench.evaluate_candidate(params, fit_rows)}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                records.append(rec)
                if rec["score"] is not None and (best is None or rec["score"] > best["score"]):
                    best = rec
                if rec["error"]:
                    log(f"candidate {n}: {rec['error']}")
                if bar is not None:
                    bar.set_postfix_str(f"generation {state['generation'] + 1}, best {best['score']:.1f}"
                                        if best else f"generation {state['generation'] + 1}")
                    bar.update(1)
            pending = []
            scores = [r["score"] for r in records]
            ok = [v for v in scores if v is not None]
            state["history"].append({"generation": state["generation"] + 1, "best": max(ok, default=None),
                                     "mean": float(np.mean(ok)) if ok else None,
                                     "best_so_far": best["score"] if best else None,
                                     "failed": len(scores) - len(ok)})
            if len(genomes) == s["popsize"]:          # a last, partial generation is not told
                opt.tell(genomes, [WORST if v is None else v for v in scores])
            state["generation"] += 1
            state["evaluated"] += len(genomes)
            _write_atomic(ckpt, pickle.dumps(state))
    if bar is not None:
        bar.close()
    if best is None:
        raise RuntimeError(f"every candidate failed; see the `error` fields in {cand_path}")
    state["best"] = best
    return state


def export_best(out: Path, bench, space, best: dict) -> Path:
    """best/recipe.yaml and best/model/ (the export the front end and search space make)."""
    with AtomicFolder(out / "best", force=True) as tmp:
        bench.export_best(space, best, tmp)
    return out / "best"


def evaluate_rows(out: Path, bench, space, fit_rows, test_rows, log=print) -> dict:
    """The front end's reference models (sources, un-evolved merges, the search's initial point) and
    the exported best model, on the fitness rows and the held-out test rows."""
    models = dict(bench.reference_models(space))
    models["evolved (best/model)"] = lambda: bench.load_exported(out / "best" / "model")
    rows = {}
    for label, make in models.items():
        model = make()
        rows[label] = {"fitness": bench.score(model, fit_rows), "test": bench.score(model, test_rows)}
        log(f"{label:<34} fitness {rows[label]['fitness']['score']:5.1f}   test {rows[label]['test']['score']:5.1f}")
    return rows


def run(cfg: dict | None, out, resume: bool = False, progress: bool = True, log=print, benches=None) -> dict:
    """`evollm merge --config` (and `evovlm merge --config`, which passes its Workbench classes as
    `benches`, {"ps": ..., "dfs": ...}): search, export, report. Returns the report data."""
    out = Path(out)
    cfg = open_run(cfg, out, resume)
    if cfg["search"]["space"] == "ps+dfs":
        return run_ps_dfs(cfg, out, progress, log, benches)
    return run_one(cfg, out, progress, log, benches)


def run_ps_dfs(cfg: dict, out: Path, progress, log, benches) -> dict:
    """PS, then DFS with A = the PS-merged model and B = `search.dfs.b`: two run folders, out/ps and
    out/dfs (each resumable), and a report.md with both tables."""
    import copy
    from .report import write_ps_dfs_report
    ps = copy.deepcopy(cfg)
    ps["search"]["space"], ps["name"] = "ps", cfg["name"] + "-ps"
    ps_data = run_one(open_run(ps, out / "ps", (out / "ps" / "config.yaml").exists()), out / "ps", progress, log,
                      benches)
    dfs = copy.deepcopy(cfg)
    d = dfs["search"]["dfs"]
    dfs["search"]["space"], dfs["name"], d["a"] = "dfs", cfg["name"] + "-dfs", "ps-merged"
    dfs["models"] = [{"model": str((out / "ps" / "best" / "model").resolve()), "name": "ps-merged"}] + \
        [m for m in cfg["models"] if m["name"] == d["b"]]
    dfs_data = run_one(open_run(dfs, out / "dfs", (out / "dfs" / "config.yaml").exists()), out / "dfs", progress,
                       log, benches)
    write_ps_dfs_report(out, cfg, ps_data, dfs_data)
    return {"ps": ps_data, "dfs": dfs_data, "rows": {**ps_data["rows"], **{
        "evolved PS+DFS (dfs/best/model)": dfs_data["rows"]["evolved (best/model)"]}},
        "baselines": ps_data["baselines"], "columns": ps_data["columns"]}


def run_one(cfg: dict, out: Path, progress, log, benches) -> dict:
    from .evaluate import Workbench
    from .report import write_report
    t0 = time.time()
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
    log(f"run {out}: {len(cfg['models'])} sources, {space.dim} genes, {cfg['search']['budget']} candidates on "
        f"{len(fit_rows)} fitness items ({cfg['device']}, loaded in {time.time() - t0:.1f} s)")
    state = search(cfg, out, bench, space, fit_rows, progress, log)
    best = state["best"]
    log(f"best candidate {best['index']}: fitness {best['score']:.1f}; exporting to {out / 'best'}")
    export_best(out, bench, space, best)
    rows = evaluate_rows(out, bench, space, fit_rows, test_rows, log)
    data = {"config": cfg["name"], "best": best, "history": state["history"], "rows": rows,
            "fitness_items": len(fit_rows), "test_items": len(test_rows),
            "baselines": bench.task.baselines(fit_rows, test_rows), "task": bench.task.name,
            "columns": [list(c) for c in bench.task.columns],
            "timing": timing(read_candidates(out / "candidates.jsonl"))}
    write_report(out, cfg, data, space, bench.task)
    return data


def timing(records) -> dict:
    ok = [r for r in records if r.get("merge_s") is not None and r.get("eval_s") is not None]
    if not ok:
        return {}
    return {"merge_s": float(np.mean([r["merge_s"] for r in ok])), "eval_s": float(np.mean([r["eval_s"] for r in ok])),
            "candidates": len(records), "failed": sum(r["score"] is None for r in records)}
