"""`evollm` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    m = sub.add_parser("merge", help="evolve a merge recipe (--config), or merge from a recipe (--recipe)",
                       description="With --recipe: merge models as a mergekit-style recipe says and write "
                       "the result as a checkpoint. Otherwise: evolve a merge recipe as RUN.yaml says (no "
                       "--config: the miniature world's default experiment) into a run folder.")
    m.add_argument("--recipe", help="mergekit-style YAML recipe: merge once, no search")
    m.add_argument("--config", help="run config (RUN.yaml) of an evolution run (default: configs/world-ja-math.yaml)")
    m.add_argument("--out", help="output folder: the checkpoint (--recipe) or the run folder "
                   "(default runs/NAME-TIMESTAMP); never overwritten")
    m.add_argument("--resume", action="store_true", help="continue the run folder given by --out")
    m.add_argument("--device", default="cpu", help="where tensors are merged: cpu or cuda (default cpu)")
    m.add_argument("--seed", type=int, default=0, help="seed of the random masks (DARE, DELLA)")
    m.add_argument("--force", action="store_true", help="replace an existing output folder")
    m.add_argument("--allow-pickle", action="store_true",
                   help="also read pickled .bin weights (with torch.load(weights_only=True))")
    m.add_argument("--shard-size", type=parse_size, default=parse_size("5GB"),
                   help="largest output shard (default 5GB)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="score one model on a task",
                       description="Score one model; prints accuracy, number-correct rate and Japanese rate.")
    e.add_argument("--model", required=True, help="model folder or hub id")
    e.add_argument("--task", default="ja-math", choices=["ja-math"])
    e.add_argument("--data", help="hub id (juletxara/mgsm, SakanaAI/gsm8k-ja-test_250-1319) or a local "
                   ".jsonl/.parquet/.tsv file (default: the miniature world's held-out Japanese math test)")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, help="score only the first N items")
    e.add_argument("--device", default="cpu")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    e.add_argument("--max-new-tokens", type=int, default=512)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--official-extraction", action="store_true",
                   help="read the answer as the official MGSM evaluation does (digits only)")
    e.add_argument("--json", help="write the scores and every output to this file")
    return ap


def cmd_merge(args) -> int:
    if args.recipe:
        if args.config or args.resume:
            raise ValueError("--recipe merges once; --config/--resume belong to an evolution run")
        if not args.out:
            raise ValueError("--recipe needs --out (the output folder)")
        return cmd_merge_recipe(args)
    return cmd_evolve(args)


def cmd_evolve(args, default_config=None, benches=None) -> int:
    """An evolution run (shared by `evovlm merge --config`, which passes its config and Workbench)."""
    import time

    from .search.config import load_config
    from .search.report import table
    from .search.run import run
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    cfg = load_config(args.config or default_config) if (args.config or not args.resume) else None
    out = Path(args.out) if args.out else Path("runs") / f"{cfg['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    data = run(cfg, out, resume=args.resume, progress=not args.quiet, benches=benches)
    print()
    print(table(data))
    made = "ps/ and dfs/ (each with best/)" if (out / "ps").is_dir() else "best/recipe.yaml, best/model/"
    print(f"\nrun folder: {out} (report.md, {made})")
    return 0


def cmd_eval(args) -> int:
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checkpoint import dtype_from_name
    from .hub import resolve_model
    from .search.config import ASSETS
    from .tasks import mgsm
    data = args.data or str(ASSETS / "data" / "mgsm-ja" / "test.jsonl")
    if not args.data and not Path(data).exists():
        raise ValueError(f"no --data given and the miniature world's data is not at {data}")
    rows = list(mgsm.load_mgsm(data, args.split))[:args.limit]
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype_from_name(args.dtype)).to(args.device).eval()
    r = mgsm.evaluate(model, tok, rows, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      official=args.official_extraction)
    print(f"{args.model} on {data} ({len(rows)} items): accuracy {r['accuracy']:.1f}  "
          f"number right {r['number_correct']:.1f}  Japanese {r['lang_rate']:.1f}")
    if args.json:
        out = {"model": args.model, "data": data, "split": args.split, "items": len(rows),
               **{k: r[k] for k in ("accuracy", "number_correct", "lang_rate")},
               "outputs": [dict(i, question=row["question"], answer_number=row["answer_number"])
                           for i, row in zip(r["items"], rows)]}
        tmp = Path(args.json).with_name(Path(args.json).name + ".tmp")
        tmp.write_text(json.dumps(out, ensure_ascii=False, indent=1))
        tmp.replace(args.json)
    return 0


def cmd_merge_recipe(args) -> int:
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
        return {"merge": cmd_merge, "eval": cmd_eval}[args.command](args)
    except (ValueError, KeyError, FileExistsError, OSError) as e:
        print(f"evollm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
