"""`make demo`: the miniature world's main job, on a CPU, in a few minutes.

Loads the world in `assets/`, scores every source, the untuned merges, the recorded best merge
(`assets/recipes/`) and the constant-answer and chance baselines on the held-out Japanese math test,
runs a short seeded CMA-ES search over DARE-TIES weights and densities on the fitness split only,
scores its best candidate on the test split, and prints the table and the found recipe (YAML that
`evollm merge --recipe` exports). `--target mixed` runs the mixed target (Japanese instructions +
English word problems); assets/README.md records both with larger searches.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from . import report


def recipe_yaml(world: Path, search: dict) -> str:
    """The searched merge as a recipe for `evollm merge --recipe`."""
    models = [{"model": str(world / "models" / n), "parameters": p} for n, p in search["models"].items()]
    return yaml.safe_dump({"merge_method": search["method"], "base_model": str(world / "models" / "base"),
                           "models": models, "parameters": {"normalize": search["normalize"]},
                           "dtype": "float32", "out_dtype": "bfloat16"}, sort_keys=False, allow_unicode=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m evollm.world.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="assets")
    ap.add_argument("--target", default="mgsm-ja", choices=["mgsm-ja", "mixed"])
    ap.add_argument("--budget", type=int, default=32, help="candidates the search evaluates")
    ap.add_argument("--fitness-items", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    world = Path(args.world)
    if not (world / "models" / "base").is_dir():
        raise SystemExit(f"{world}: no miniature world here (expected {world / 'models' / 'base'}); "
                         "run from the repository root or pass --world")
    report.quiet_progress()
    t0 = time.time()
    res = report.run(world, args.target, args.budget, args.fitness_items, args.seed)
    print()
    print(report.table(res))
    s = res["search"]
    print(f"\nsearched on {s['fitness_items']} fitness items, {s['budget']} candidates "
          f"(best fitness {s['fitness_accuracy']:.1f}); the recipe:\n")
    print(recipe_yaml(world, s))
    print(f"demo took {time.time() - t0:.0f} s; assets/README.md has the world's full tables")


if __name__ == "__main__":
    main()
