"""`make demo`'s run at two commits, side by side: the search phase's time and the result.

Each commit is checked out into a temporary worktree and its `evollm merge` runs there with the
default config (configs/world-ja-math.yaml), one after the other, with the Python of this venv (so
both use the same torch and transformers). Search phase = the sum over the candidates of merge and
evaluation seconds (candidates.jsonl); wall = the whole command. Run it on an otherwise idle
machine: two torch processes at once distort both.

    python benchmarks/demo_speed.py --old REV [--new REV] [--seeds 0 1 2] [--out benchmarks/demo_speed_cpu.md]

With several seeds (the config's `seed`: CMA-ES's draws and the DARE masks) the search's luck is
averaged out: a change of the random masks alone can move one seed's evolved model a lot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, work: Path) -> tuple:
    """A temporary worktree of `rev` and its short sha."""
    tree = work / f"tree-{rev.replace('/', '_')}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
    sha = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    return tree, sha


def run_at(rev: str, tree: Path, sha: str, seed, work: Path) -> dict:
    """The default config's run in `tree` (with `seed` in place of the config's when given)."""
    config = tree / "configs" / "world-ja-math.yaml"
    if seed is not None:
        text, n = re.subn(r"(?m)^seed: *\d+", f"seed: {seed}", config.read_text())
        if n != 1:
            raise SystemExit(f"{config}: no top-level 'seed:' line to replace")
        config = config.with_name(f"_demo_speed_seed{seed}.yaml")        # beside it: relative paths hold
        config.write_text(text)
    out = work / f"run-{sha}-seed{seed}"
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "evollm.cli", "merge", "--config", str(config), "--out", str(out),
                    "--quiet"], env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    recs = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    best = report["rows"]["evolved (best/model)"]
    return {"rev": rev, "sha": sha, "seed": "config" if seed is None else seed, "wall": wall,
            "candidates": len(recs), "search": sum(r["merge_s"] + r["eval_s"] for r in recs),
            "merge": sum(r["merge_s"] for r in recs), "eval": sum(r["eval_s"] for r in recs),
            "fitness": best["fitness"]["score"], "test": best["test"]["score"]}


def row(r: dict, base_search: float) -> str:
    return (f"| {r['rev']} ({r['sha']}) | {r['seed']} | {r['search']:.1f} | {r['search'] / r['candidates']:.2f} | "
            f"{r['merge']:.1f} | {r['eval']:.1f} | {r['wall']:.0f} | {base_search / r['search']:.2f}x | "
            f"{r['fitness']:.1f} | {r['test']:.1f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the baseline commit")
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--seeds", type=int, nargs="+", help="run each commit at these seeds (default: the config's)")
    ap.add_argument("--out", help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    from evollm.search.report import machine
    revs, seeds = (args.old, args.new), args.seeds or [None]
    runs = {rev: [] for rev in revs}
    with tempfile.TemporaryDirectory() as tmp:
        trees = [checkout(rev, Path(tmp)) for rev in revs]
        try:
            for seed in seeds:                      # commits alternate, so a drift of the machine hits both
                for rev, (tree, sha) in zip(revs, trees):
                    runs[rev].append(run_at(rev, tree, sha, seed, Path(tmp)))
                    print(row(runs[rev][-1], runs[args.old][-1]["search"]), flush=True)
        finally:
            for tree, _ in trees:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    seeds_arg = f" --seeds {' '.join(map(str, seeds))}" if args.seeds else ""
    lines = [f"# `make demo` at two commits\n\nCommand: `python benchmarks/demo_speed.py --old {args.old} "
             f"--new {args.new}{seeds_arg}`. Machine: {machine()}. Search phase = the candidates' merge + evaluation "
             "seconds; speed-up against the old commit at the same seed.\n",
             "| commit | seed | search phase (s) | per candidate (s) | merge (s) | evaluation (s) | whole command (s) | "
             "search speed-up | evolved fitness | evolved test |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i in range(len(seeds)):
        for rev in revs:
            lines.append(row(runs[rev][i], runs[args.old][i]["search"]))
    if len(seeds) > 1:
        old_search = sum(r["search"] for r in runs[args.old])
        for rev in revs:
            rs = runs[rev]
            mean = {k: statistics.mean(r[k] for r in rs) for k in ("fitness", "test", "wall")}
            sd = statistics.stdev(r["test"] for r in rs)
            total = sum(r["search"] for r in rs)
            lines.append(f"| {rev} ({rs[0]['sha']}) | mean | {total / len(rs):.1f} | "
                         f"{total / sum(r['candidates'] for r in rs):.2f} | {statistics.mean(r['merge'] for r in rs):.1f} | "
                         f"{statistics.mean(r['eval'] for r in rs):.1f} | {mean['wall']:.0f} | {old_search / total:.2f}x | "
                         f"{mean['fitness']:.1f} | {mean['test']:.1f} (sd {sd:.1f}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from evollm.fsutil import write_atomic
        write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
