"""`evovlm` command line (the VLM front end; it grows merge and bench commands on evollm's core)."""

from __future__ import annotations

import argparse
import math
import sys

from evollm import __version__
from evollm.cli import add_run_options, check_recipe_args, guarded, parse_size

def split_parts(names):
    """Group tensor names into vision tower, projector and language tower."""
    from .model import part
    parts = {"vision tower": [], "projector": [], "language tower": []}
    for n in names:
        parts[part(n)].append(n)
    return parts


def cmd_merge(args) -> int:
    if not args.recipe:
        from evollm.cli import cmd_evolve
        return cmd_evolve(args, "world-vqa.yaml", "evovlm")
    check_recipe_args(args)
    from evollm.recipe import load_recipe
    from .export import merge_vlm
    recipe = load_recipe(args.recipe)
    s = merge_vlm(recipe, args.out, device=args.device or "cpu", seed=args.seed or 0, force=args.force,
                  allow_pickle=args.allow_pickle, shard_bytes=args.shard_size, license=args.license)
    print(f"merged {s['merged']} language-tower tensors of {s['vlm']} ({s['tensors']} tensors in all, the rest "
          f"copied) with {recipe.merge_method} in {s['seconds']:.1f} s -> {s['out']}")
    return 0


def cmd_inspect(args) -> int:
    from evollm.checkpoint import Checkpoint
    from evollm.hub import resolve_model
    from evollm.engine.disk import layer_prefix
    ck = Checkpoint(resolve_model(args.model), name=args.model, allow_pickle=args.allow_pickle)
    prefix, n_layers = layer_prefix(ck)
    print(f"{args.model}: {ck.config.get('architectures', ['?'])[0]}, decoder layers {prefix}.* x {n_layers}")
    print(f"{'part':<16}{'tensors':>9}{'parameters':>14}")
    for part, names in split_parts(ck.names()).items():
        numel = sum(math.prod(ck.shape(n)) for n in names)
        print(f"{part:<16}{len(names):>9}{numel:>14,}")
    return 0


def cmd_bench(args) -> int:
    from evollm.datafiles import check_out_file
    from .bench import run_bench, table, write_json
    if args.json:
        check_out_file(args.json)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    data = {}
    for d in args.data:
        task, sep, path = d.partition("=")
        if not sep:
            raise ValueError(f"--data {d!r}: expected TASK=PATH (e.g. ja-vg-vqa-500=./jvg/)")
        data[task] = path
    from evollm.cli import quiet_libraries
    quiet_libraries()
    res = run_bench(args.model, tasks, data, args.limit, args.device, args.batch_size, seed=args.seed, progress=True,
                    protocol=args.protocol, dtype=args.dtype)
    print()
    print(table(res, tasks))
    if args.json:
        write_json(res, args.json)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="evovlm", description="Evolutionary merging of LLaVA-style VLMs.")
    ap.add_argument("--version", action="version", version=f"evovlm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="show the vision tower / projector / language tower of a checkpoint")
    i.add_argument("--model", required=True)
    i.add_argument("--allow-pickle", action="store_true")
    m = sub.add_parser("merge", help="evolve a VLM merge (--config) or merge from a recipe (--recipe)",
                       description="With --recipe: a recipe whose models (and base_model) name one LLaVA-style VLM "
                       "beside causal LMs; the output is the VLM with its language tower merged, everything else as "
                       "read. Otherwise: evolve such a recipe as RUN.yaml says (no --config: the miniature world's "
                       "VLM experiment, configs/world-vqa.yaml) into a run folder, as `evollm merge --config`.")
    m.add_argument("--recipe", help="mergekit-style YAML recipe: merge once, no search")
    m.add_argument("--config", help="run config (RUN.yaml) of an evolution run")
    m.add_argument("--resume", action="store_true", help="continue the run folder given by --out")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.add_argument("--out", help="output folder (--recipe; written atomically, never over an existing one "
                   "without --force) or run folder (default runs/NAME-TIMESTAMP)")
    m.add_argument("--device", help="cpu or cuda (default: cpu; --config: the config's `device`)")
    m.add_argument("--seed", type=int, help="seed of the random masks (DARE, DELLA) (default: 0; --config: the "
                   "config's `seed`)")
    add_run_options(m)
    m.add_argument("--force", action="store_true", help="--recipe: replace an existing output folder")
    m.add_argument("--license", help="--recipe: the license in the model card (README.md); default: other")
    m.add_argument("--allow-pickle", action="store_true")
    m.add_argument("--shard-size", type=parse_size, default=parse_size("5GB"))
    b = sub.add_parser("bench", help="the Japanese VLM benchmark suite, models side by side",
                       description="Score VLMs on Japanese VQA benchmarks as the official evaluation does: rouge1, "
                       "rouge2 and rougeL on MeCab words, without and with the language rule. Real benchmarks run "
                       "under the official protocol (fp16, 5 beams, repetition penalty 1.5, 512 new tokens), the "
                       "world's copies under the world's.")
    b.add_argument("--model", action="append", required=True, help="VLM folder or hub id (repeat for a side-by-side table)")
    b.add_argument("--tasks", default="world-vqa,world-culture",
                   help="comma-separated, from ja-vg-vqa-500, ja-vlm-wild (hub ids, or --data), world-vqa, "
                   "world-culture (the miniature world's copies); default: %(default)s")
    b.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                   help="a local copy (parquet file or folder) of a task's data")
    b.add_argument("--limit", type=int, help="only the first N items of each task (N >= 1)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--batch-size", type=int, help="default: the protocol's (4 official, 16 world)")
    b.add_argument("--protocol", choices=["official", "world"],
                   help="run every task under this protocol (default: official for the real benchmarks, world for "
                   "the world's copies)")
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default: the protocol's: float16 official, float32 world)")
    b.add_argument("--seed", type=int, default=42,
                   help="seed of the bootstrap (default 42, the official evaluate.py's)")
    b.add_argument("--json", help="write scores and every prediction here")
    args = ap.parse_args(argv)
    return guarded("evovlm", {"inspect": cmd_inspect, "merge": cmd_merge, "bench": cmd_bench}[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
