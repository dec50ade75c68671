"""`evovlm` command line (the VLM front end; it grows merge and bench commands on evollm's core)."""

from __future__ import annotations

import argparse
import math
import sys

from evollm import __version__

#: name fragments of the parts of a LLaVA-style checkpoint that are not the language tower
VISION_KEYS = ("vision_tower", "visual", "vision_model")
PROJECTOR_KEYS = ("multi_modal_projector", "mm_projector", "image_newline")


def split_parts(names):
    """Group tensor names into vision tower, projector and language tower."""
    parts = {"vision tower": [], "projector": [], "language tower": []}
    for n in names:
        if any(k in n for k in VISION_KEYS):
            parts["vision tower"].append(n)
        elif any(k in n for k in PROJECTOR_KEYS):
            parts["projector"].append(n)
        else:
            parts["language tower"].append(n)
    return parts


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
    args = ap.parse_args(argv)
    try:
        return {"inspect": cmd_inspect}[args.command](args)
    except (ValueError, OSError) as e:
        print(f"evovlm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
