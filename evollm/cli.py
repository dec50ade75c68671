"""`evollm` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9,
             "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        return int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="evollm", description="Evolutionary model merging for LLMs.")
    ap.add_argument("--version", action="version", version=f"evollm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge models from a mergekit-style recipe",
                       description="Merge models as a recipe says and write the result as a checkpoint.")
    m.add_argument("--recipe", required=True, help="mergekit-style YAML recipe")
    m.add_argument("--out", required=True, help="output folder (written atomically)")
    m.add_argument("--device", default="cpu", help="where tensors are merged: cpu or cuda (default cpu)")
    m.add_argument("--seed", type=int, default=0, help="seed of the random masks (DARE, DELLA)")
    m.add_argument("--force", action="store_true", help="replace an existing output folder")
    m.add_argument("--allow-pickle", action="store_true",
                   help="also read pickled .bin weights (with torch.load(weights_only=True))")
    m.add_argument("--shard-size", type=parse_size, default=parse_size("5GB"),
                   help="largest output shard (default 5GB)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def cmd_merge(args) -> int:
    from .merger import run_merge
    from .recipe import load_recipe
    recipe = load_recipe(args.recipe)
    s = run_merge(recipe, args.out, device=args.device, seed=args.seed, force=args.force,
                  allow_pickle=args.allow_pickle, shard_bytes=args.shard_size, progress=not args.quiet)
    print(f"merged {s['tensors']} tensors ({s['bytes'] / 1e6:.1f} MB in {s['shards']} shard(s)) "
          f"from {s['models']} models with {recipe.merge_method} in {s['seconds']:.1f} s -> {s['out']}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"merge": cmd_merge}[args.command](args)
    except (ValueError, FileExistsError, OSError) as e:
        print(f"evollm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
