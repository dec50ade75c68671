"""`evovlm` command line (the VLM front end; it grows merge and bench commands on evollm's core)."""

from __future__ import annotations

import argparse
import math
import sys

from evollm import __version__
from evollm.cli import parse_size

def split_parts(names):
    """Group tensor names into vision tower, projector and language tower."""
    from .model import part
    parts = {"vision tower": [], "projector": [], "language tower": []}
    for n in names:
        parts[part(n)].append(n)
    return parts


def cmd_merge(args) -> int:
    if not args.recipe:
        raise ValueError("evovlm merge needs --recipe (evolution with --config is not implemented yet)")
    if not args.out:
        raise ValueError("--recipe needs --out (the output folder)")
    from evollm.recipe import load_recipe
    from .merge import merge_vlm
    recipe = load_recipe(args.recipe)
    s = merge_vlm(recipe, args.out, device=args.device, seed=args.seed, force=args.force,
                  allow_pickle=args.allow_pickle, shard_bytes=args.shard_size)
    print(f"merged {s['merged']} language-tower tensors of {s['vlm']} ({s['tensors']} tensors in all, the rest "
          f"copied) with {recipe.merge_method} in {s['seconds']:.1f} s -> {s['out']}")
    return 0


def cmd_inspect(args) -> int:
    from evollm.checkpoint import Checkpoint
    from evollm.hub import resolve_model
    from evollm.merger import layer_prefix
    ck = Checkpoint(resolve_model(args.model), name=args.model, allow_pickle=args.allow_pickle)
    prefix, n_layers = layer_prefix(ck)
    print(f"{args.model}: {ck.config.get('architectures', ['?'])[0]}, decoder layers {prefix}.* x {n_layers}")
    print(f"{'part':<16}{'tensors':>9}{'parameters':>14}")
    for part, names in split_parts(ck.names()).items():
        numel = sum(math.prod(ck.shape(n)) for n in names)
        print(f"{part:<16}{len(names):>9}{numel:>14,}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="evovlm", description="Evolutionary merging of LLaVA-style VLMs.")
    ap.add_argument("--version", action="version", version=f"evovlm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="show the vision tower / projector / language tower of a checkpoint")
    i.add_argument("--model", required=True)
    i.add_argument("--allow-pickle", action="store_true")
    m = sub.add_parser("merge", help="merge a VLM's language tower with causal LMs from a mergekit-style recipe",
                       description="A recipe whose models (and base_model) name one LLaVA-style VLM beside causal "
                       "LMs: the output is the VLM with its language tower merged, everything else as read.")
    m.add_argument("--recipe", help="mergekit-style YAML recipe")
    m.add_argument("--out", help="output folder (written atomically; never over an existing one without --force)")
    m.add_argument("--device", default="cpu")
    m.add_argument("--seed", type=int, default=0, help="seed of the random masks (DARE, DELLA)")
    m.add_argument("--force", action="store_true")
    m.add_argument("--allow-pickle", action="store_true")
    m.add_argument("--shard-size", type=parse_size, default=parse_size("5GB"))
    args = ap.parse_args(argv)
    try:
        return {"inspect": cmd_inspect, "merge": cmd_merge}[args.command](args)
    except (ValueError, OSError) as e:
        print(f"evovlm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
