"""Racing fitness against full fitness on the world's default search (configs/world-ja-math.yaml).

For each seed, the default config as it is (every candidate on all 200 fitness items) and with
`task.fitness.schedule` set (each schedule given), each run by `evollm merge` in its own process, one
after the other: the evolved model's held-out test accuracy, the best fitness, the fitness items and
generated tokens summed over the candidates (candidates.jsonl), the search phase's seconds (the sum of
the candidates' merge and evaluation seconds) and the whole command's wall time. Run it on an
otherwise idle machine.

    python benchmarks/racing.py [--seeds 0 1 2] [--out benchmarks/racing_cpu.md]
                                [--only LABEL ... --previous benchmarks/racing_cpu.json]

The measured rows are also written as JSON beside --out; `--only` re-measures some schedules and takes
the other rows from `--previous` (a code change that affects only those schedules).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = {"full": None,
             "race": {"block": 25, "confidence": 0.9},
             "race, tolerance 10": {"block": 25, "confidence": 0.9, "tolerance": 10}}


def one(label: str, schedule, seed: int, work: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "world-ja-math.yaml").read_text())
    cfg["seed"] = seed
    cfg["task"]["fitness"]["schedule"] = schedule
    path = ROOT / "configs" / f"_racing_{os.getpid()}.yaml"        # beside it: relative paths hold
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = work / f"{label.replace(' ', '_').replace(',', '')}-seed{seed}"
    try:
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "evollm.cli", "merge", "--config", str(path), "--out", str(out),
                        "--quiet"], check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        wall = time.time() - t0
    finally:
        path.unlink()
    recs = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    rep = json.loads((out / "report.json").read_text())
    evolved = rep["rows"]["evolved (best/model)"]
    return {"label": label, "seed": seed, "wall": wall, "search": sum(r["merge_s"] + r["eval_s"] for r in recs),
            "items": sum(r["items"] for r in recs), "tokens": sum(r["tokens"] for r in recs),
            "fitness": evolved["fitness"]["score"], "test": evolved["test"]["score"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", nargs="+", choices=list(SCHEDULES), help="measure only these schedules")
    ap.add_argument("--previous", type=Path, help="rows of the other schedules (a JSON this script wrote)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from evollm.search.report import machine
    only = args.only or list(SCHEDULES)
    kept = [r for r in json.loads(args.previous.read_text()) if r["label"] not in only] if args.previous else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for label, schedule in SCHEDULES.items():
                if label in only:
                    rows.append(one(label, schedule, seed, Path(tmp)))
                    print(rows[-1], flush=True)
                else:
                    rows += [r for r in kept if r["label"] == label and r["seed"] == seed]
    full = {r["seed"]: r for r in rows if r["label"] == "full"}
    remeasured = f" Re-measured for this table: {', '.join(only)}." if args.previous else ""
    lines = [f"Machine: {machine()}.{remeasured}", "",
             "The world's default search (configs/world-ja-math.yaml, 96 candidates, 200 fitness items) with every "
             "candidate on every item (full) and with `task.fitness.schedule` (race: "
             + "; ".join(f"{k}: {v}" for k, v in SCHEDULES.items() if v) + "), `python benchmarks/racing.py`.", "",
             "| fitness | seed | held-out test | best fitness | items | generated tokens | tokens vs full | "
             "search phase (s) | wall (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['seed']} | {r['test']:.1f} | {r['fitness']:.1f} | {r['items']} | "
                     f"{r['tokens']} | {r['tokens'] / full[r['seed']]['tokens']:.2f} | {r['search']:.0f} | "
                     f"{r['wall']:.0f} |")
    lines += ["", "| fitness | held-out test, mean (sd) | tokens vs full, mean | search phase vs full, mean |",
              "|---|---:|---:|---:|"]
    for label in SCHEDULES:
        sel = [r for r in rows if r["label"] == label]
        tests = [r["test"] for r in sel]
        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        lines.append(f"| {label} | {statistics.mean(tests):.1f} ({sd:.1f}) | "
                     f"{statistics.mean(r['tokens'] / full[r['seed']]['tokens'] for r in sel):.2f} | "
                     f"{statistics.mean(r['search'] / full[r['seed']]['search'] for r in sel):.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        from evollm.fsutil import write_atomic
        write_atomic(args.out, text + "\n")
        write_atomic(args.out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
