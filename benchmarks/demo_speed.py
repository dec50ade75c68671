"""`make demo`'s run at two commits, side by side: the search phase's time and the result.

Each commit is checked out into a temporary worktree and its `evollm merge` runs there with the
default config (configs/world-ja-math.yaml), one after the other, with the Python of this venv (so
both use the same torch and transformers). Search phase = the sum over the candidates of merge and
evaluation seconds (candidates.jsonl); wall = the whole command. Run it on an otherwise idle
machine: two torch processes at once distort both.

    python benchmarks/demo_speed.py --old REV [--new REV] [--out benchmarks/demo_speed_cpu.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_at(rev: str, work: Path) -> dict:
    tree = work / f"tree-{rev.replace('/', '_')}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
    try:
        sha = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        out = work / f"run-{sha}"
        env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "evollm.cli", "merge", "--config",
                        str(tree / "configs" / "world-ja-math.yaml"), "--out", str(out), "--quiet"],
                       env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
        recs = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
        report = json.loads((out / "report.json").read_text())
        best = report["rows"]["evolved (best/model)"]
        return {"rev": rev, "sha": sha, "wall": wall, "candidates": len(recs),
                "search": sum(r["merge_s"] + r["eval_s"] for r in recs),
                "merge": sum(r["merge_s"] for r in recs), "eval": sum(r["eval_s"] for r in recs),
                "fitness": best["fitness"]["score"], "test": best["test"]["score"]}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the baseline commit")
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--out", help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    from evollm.search.report import machine
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_at(r, Path(tmp)) for r in (args.old, args.new)]
    old = rows[0]
    lines = [f"# `make demo` at two commits\n\nCommand: `python benchmarks/demo_speed.py --old {args.old} --new {args.new}`."
             f" Machine: {machine()}.\n",
             "| commit | search phase (s) | per candidate (s) | merge (s) | evaluation (s) | whole command (s) | "
             "search speed-up | evolved fitness | evolved test |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rev']} ({r['sha']}) | {r['search']:.1f} | {r['search'] / r['candidates']:.2f} | "
                     f"{r['merge']:.1f} | {r['eval']:.1f} | {r['wall']:.0f} | {old['search'] / r['search']:.2f}x | "
                     f"{r['fitness']:.1f} | {r['test']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from evollm.fsutil import write_atomic
        write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
