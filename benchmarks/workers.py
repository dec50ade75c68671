"""The world's default search (configs/world-ja-math.yaml, `make demo`'s) with one worker and with Ray
workers: the search phase's wall time, the ratio, CPU threads per worker, and whether the candidates are
the ones a run without Ray logs.

Rows: 1 worker (this process) with 2 threads (torch's default on a 2-core machine, i.e. `make demo`),
1 worker with 1 thread, and N Ray workers with 1 thread each (`--workers`, default 2). Workers x threads
never exceeds the cores. The search phase is the wall time of the evolution loop alone (loading, Ray's
start and the report's scoring are timed apart as "start-up"). Run it on an otherwise idle machine.

    python benchmarks/workers.py [--workers 2] [--budget 96] [--out benchmarks/workers_cpu.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evollm.fsutil import write_atomic  # noqa: E402
from evollm.search.config import load_config  # noqa: E402
from evollm.search.report import machine  # noqa: E402
from evollm.search.run import open_pool, read_candidates, search  # noqa: E402


def one(cfg, workers: int, threads: int, work: Path) -> dict:
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, workers=workers, threads=threads))
    out = work / f"w{workers}-t{threads}"
    out.mkdir()
    t0 = time.perf_counter()
    with open_pool(cfg, lambda *a: None) as pool:
        t1 = time.perf_counter()
        state = search(cfg, out, pool, progress=False, log=print)
        t2 = time.perf_counter()
    recs = read_candidates(out / "candidates.jsonl")
    strip = [{k: v for k, v in r.items() if k not in ("merge_s", "eval_s", "worker")} for r in recs]
    return {"workers": workers, "threads": threads, "startup": t1 - t0, "search": t2 - t1, "n": len(recs),
            "per_candidate": sum(r["merge_s"] + r["eval_s"] for r in recs) / len(recs),
            "best": state["best"]["score"], "records": strip}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget", type=int, help="candidates (default: the config's, 96)")
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(ROOT / "configs" / "world-ja-math.yaml")
    if args.budget:
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, budget=args.budget))
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(cfg, 1, cores, Path(tmp)), one(cfg, 1, 1, Path(tmp)), one(cfg, args.workers, 1, Path(tmp))]
    default, single = rows[0], rows[1]
    lines = [f"Machine: {machine()}; Ray {ray_version()}.", "",
             f"The world's default search (configs/world-ja-math.yaml: {rows[0]['n']} candidates of population "
             f"{cfg.search.popsize}, {cfg.task.fitness.limit} fitness items, seed {cfg.seed}), "
             "`python benchmarks/workers.py`.", "",
             "| workers x CPU threads | search phase (s) | start-up (s) | candidate, merge + eval (s) | speed vs 1 x "
             f"{cores} | speed vs 1 x 1 | candidates = 1 x 1's | best fitness |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        where = "this process" if r["workers"] == 1 else "Ray"
        lines.append(f"| {r['workers']} x {r['threads']} ({where}) | {r['search']:.1f} | {r['startup']:.1f} | "
                     f"{r['per_candidate']:.2f} | {default['search'] / r['search']:.2f}x | "
                     f"{single['search'] / r['search']:.2f}x | "
                     f"{'yes' if r['records'] == single['records'] else 'no'} | {r['best']:.1f} |")
    lines += ["", "Several GPUs: not measured (no machine with more than one GPU was available to this work)."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_atomic(args.out, text + "\n")
    return 0


def ray_version() -> str:
    import ray
    return ray.__version__


if __name__ == "__main__":
    sys.exit(main())
