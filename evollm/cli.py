"""`evollm` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def parse_size(text: str) -> int:
    """A size on the command line (argparse type)."""
    from .fsutil import parse_size as size
    try:
        return size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    m.add_argument("--out", help="output folder: the checkpoint (--recipe; an existing one is replaced only with "
                   "--force, and only once the new one is complete) or the run folder (default "
                   "runs/NAME-TIMESTAMP; an existing run is continued only with --resume, never overwritten)")
    m.add_argument("--resume", action="store_true", help="continue the run folder given by --out")
    m.add_argument("--device", help="where tensors are merged: cpu or cuda (default: cpu; --config: the config's "
                   "`device`)")
    m.add_argument("--seed", type=int, help="seed of the random masks (DARE, DELLA) (default: 0; --config: the "
                   "config's `seed`, which also seeds the search)")
    add_run_options(m)
    m.add_argument("--force", action="store_true", help="--recipe: replace an existing output folder")
    m.add_argument("--license", help="--recipe: the license written into the model card (README.md), a Hub "
                   "license id such as apache-2.0 (default: other, with the sources' licenses to check)")
    m.add_argument("--allow-pickle", action="store_true",
                   help="also read pickled .bin weights (with torch.load(weights_only=True))")
    m.add_argument("--shard-size", type=parse_size, default=parse_size("5GB"),
                   help="largest output shard (default 5GB)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("eval", help="score a model on MGSM-ja, and on lm-eval tasks (--suite, --tasks)",
                       description="Score one model on MGSM-ja (or a file of its format): one greedy generation "
                       "scored under the official protocol and under the improved one, side by side, with the items "
                       "where they disagree counted (evollm.protocols.mgsm_ja). With --suite or --tasks: general "
                       "ability through lm-eval (the extra evollm[lmeval]) beside MGSM-ja, for every --model, or for "
                       "the sources and the evolved model of a run (--run, scored in memory: no export).")
    e.add_argument("--model", action="append", help="model folder or hub id (with --suite/--tasks: repeat it for "
                   "one row per model)")
    e.add_argument("--suite", help="lm-eval suite: jp-lmeh (lm-eval's japanese_leaderboard at the JP-LMEH few-shot "
                   "counts), world-general (the miniature world's stand-in), or one a front end adds")
    e.add_argument("--tasks", help="lm-eval task or group names, comma-separated (instead of --suite)")
    e.add_argument("--fewshot", type=int, help="few-shot count for every lm-eval task (default: the suite's, "
                   "else each task's own)")
    e.add_argument("--include-path", action="append", default=[],
                   help="a folder of lm-eval task YAMLs of your own (for --tasks)")
    e.add_argument("--run", help="a finished run folder: score its base, sources and evolved model (the best "
                   "recipe merged into the run's resident model) with lm-eval, beside the MGSM-ja test scores of "
                   "its report")
    e.add_argument("--task", default="ja-math", choices=["ja-math"])
    e.add_argument("--data", help="hub id (juletxara/mgsm, SakanaAI/gsm8k-ja-test_250-1319) or a local "
                   ".jsonl/.parquet/.tsv file (default: the miniature world's held-out Japanese math test)")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, help="score only the first N items (N >= 1)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    e.add_argument("--max-new-tokens", type=int, help="default: the protocol's (1024)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--protocol", choices=["official", "improved"], default="official",
                   help="the headline protocol (default: official, the paper's numbers); both are reported")
    e.add_argument("--official-extraction", action="store_const", const="official", dest="protocol",
                   help=argparse.SUPPRESS)          # before protocols: same as --protocol official
    e.add_argument("--json", help="write the scores and every output to this file")
    return ap


def add_run_options(m):
    """An evolution run's options besides the config (both front ends)."""
    m.add_argument("--workers", type=int, help="score candidates on N Ray actors, one GPU each on cuda (default: "
                   "the config's `search.workers`, 1: this process, no Ray); a resume may change it")
    m.add_argument("--ray-address", help="join a running Ray cluster (e.g. auto) instead of starting Ray here")
    m.add_argument("--threads", type=int, help="torch CPU threads per worker (default: the config's "
                   "`search.threads`, else this machine's cores); CPU results depend on it, not on --workers")
    m.add_argument("--budget", type=int, help="candidates the search ends at (default: the config's "
                   "`search.budget`); with --resume it may raise a run's budget, also of a finished run, whose "
                   "export and report are then made again")


def check_recipe_args(args):
    """`merge --recipe` (both front ends): one merge into --out, none of an evolution run's options."""
    if args.config or args.resume or args.budget is not None:
        raise ValueError("--recipe merges once; --config/--resume/--budget belong to an evolution run")
    if not args.out:
        raise ValueError("--recipe needs --out (the output folder)")


def cmd_merge(args) -> int:
    if args.recipe:
        check_recipe_args(args)
        return cmd_merge_recipe(args)
    return cmd_evolve(args)


def quiet_libraries():
    """No progress bars or warnings from transformers, datasets and the hub: a run prints its own lines."""
    import datasets
    import huggingface_hub.utils
    import transformers
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    huggingface_hub.utils.disable_progress_bars()


def cmd_evolve(args, default_config: str = "world-ja-math.yaml", prog: str = "evollm") -> int:
    """An evolution run (shared by `evovlm merge --config`, whose default config is the world's VQA
    run); without --config, configs/`default_config` of the checkout (the miniature world's)."""
    import shlex
    import time

    from .search.config import load_config
    from .search.report import failure_lines, table
    from .search.run import RunFailed, run
    from .search.runfolder import logged_candidates
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    from .checkout import checkout_file
    overrides = {k: getattr(args, k) for k in ("device", "seed") if getattr(args, k, None) is not None}
    if args.threads is not None:
        overrides["search.threads"] = args.threads
    execution = {"workers": args.workers, "ray_address": args.ray_address}
    if args.config or not args.resume:
        cfg = load_config(args.config or checkout_file("configs", default_config, what="no --config given, and the "
                                                      "default run config"), overrides)
    elif overrides:
        raise ValueError(f"--resume without --config continues the run folder's own config; "
                         f"{', '.join('--' + k.split('.')[-1] for k in overrides)} would change it")
    else:
        cfg = None
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    quiet_libraries()
    resume = f"{prog} merge --out {shlex.quote(str(out))} --resume"
    try:
        data = run(cfg, out, resume=args.resume, progress=not args.quiet, execution=execution, budget=args.budget)
    except KeyboardInterrupt as e:
        if out.is_dir():
            n = logged_candidates(out)
            print(f"\n{prog}: interrupted; nothing was lost ({n} candidate{'s' * (n != 1)} logged in {out}). "
                  f"Continue with:\n  {resume}", file=sys.stderr)
        else:
            print(f"\n{prog}: interrupted before the first candidate; no run folder was left. "
                  "Run the same command again to start.", file=sys.stderr)
        return interrupted_code(e)
    except RunFailed as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if out.is_dir() and logged_candidates(out):
            print(f"  after fixing the cause: {resume} (failed candidates of the last generation are run again), "
                  "or start a new run folder if you change the config", file=sys.stderr)
        return 1
    print()
    print(table(data))
    made = "ps/ and dfs/ (each with best/)" if (out / "ps").is_dir() else "best/recipe.yaml, best/model/"
    print(f"\nrun folder: {out} (report.md, {made})")
    lines = failure_lines(data.get("failures"))
    if lines:
        print("\n" + "\n".join(lines), file=sys.stderr)
        f = data["failures"]
        if 2 * f["failed"] > f["candidates"]:
            print(f"{prog}: error: most candidates failed ({f['failed']} of {f['candidates']}); the result comes "
                  "from the few that did not: fix the cause above before trusting it", file=sys.stderr)
            return 3
    return 0


def cmd_eval(args) -> int:
    import json

    from .checkpoint import check_model_folder
    from .datafiles import check_out_file, check_positive
    from .checkout import checkout_file
    from .fsutil import write_atomic
    from .hub import resolve_model
    from .engine.disk import check_device
    from .tasks import mgsm
    for flag in ("limit", "batch_size", "max_new_tokens"):
        check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.fewshot is not None and args.fewshot < 0:
        raise ValueError(f"--fewshot must be >= 0, got {args.fewshot}")
    check_device(args.device)
    if args.json:
        check_out_file(args.json)
    general = bool(args.suite or args.tasks)
    if not general and (args.run or args.fewshot is not None or args.include_path):
        raise ValueError("--run, --fewshot and --include-path go with --suite or --tasks (lm-eval)")
    if bool(args.run) == bool(args.model) or (not general and len(args.model) != 1):
        raise ValueError("name one model with --model (with --suite/--tasks: one or more --model, or --run)")
    if general:
        return cmd_eval_general(args)
    data = args.data or str(checkout_file("assets", "data", "mgsm-ja", "test.jsonl",
                                          what="no --data given, and the miniature world's MGSM-ja test"))
    quiet_libraries()
    ref = args.model[0]
    check_model_folder(resolve_model(ref), ref)   # a VLM, a broken config.json: named first
    rows = list(mgsm.load_mgsm(data, args.split))[:args.limit]
    model, tok = load_for_eval(ref, args)
    outs, res = score_mgsm(model, tok, rows, args)
    names = list(res)
    diff = mgsm.compare(res)
    print(f"{ref} on {data} ({len(rows)} items)")
    print(protocol_table(res))
    for pair, d in diff.items():
        print(f"{pair}: {d['verdict']} item(s) scored differently ({d['number_read']} read another number, "
              f"{d['language_verdict']} judged the language differently, {d['text_cut']} cut at another stop string)")
    if args.json:
        keys = ("accuracy", "number_correct", "lang_rate")
        out = {"model": ref, "data": data, "split": args.split, "items": len(rows), "protocol": args.protocol,
               **{k: res[args.protocol][k] for k in keys},
               "protocols": {p: {k: r[k] for k in keys} for p, r in res.items()}, "differences": diff,
               "outputs": [dict(question=row["question"], answer_number=row["answer_number"], generated=o,
                                **{p: res[p]["items"][i] for p in names})
                           for i, (o, row) in enumerate(zip(outs, rows))]}
        write_atomic(args.json, json.dumps(out, ensure_ascii=False, indent=1))
    return 0


def load_for_eval(ref: str, args):
    """(model, batch tokenizer) of a folder or hub id, in --dtype on --device."""
    from .checkpoint import dtype_from_name
    from .hub import batch_tokenizer, load_causal_lm
    return load_causal_lm(ref, dtype_from_name(args.dtype), args.device), batch_tokenizer(ref)


def score_mgsm(model, tok, rows, args) -> tuple:
    """One greedy generation on MGSM-ja rows, scored under the headline protocol (first) and the other:
    (outputs, {protocol: scores})."""
    from .tasks import mgsm
    names = [args.protocol] + [p for p in ("official", "improved") if p != args.protocol]
    outs = mgsm.generate_outputs(model, tok, rows, names, max_new_tokens=args.max_new_tokens,
                                 batch_size=args.batch_size, progress=True)
    return outs, {p: mgsm.score_outputs(outs, rows, p) for p in names}


def cmd_eval_general(args) -> int:
    """`evollm eval --suite/--tasks`: lm-eval scores beside MGSM-ja, one row per model (lmeval.py)."""
    import json

    from . import lmeval
    from .checkout import checkout_file
    from .fsutil import write_atomic
    from .tasks import mgsm
    shots, include = lmeval.plan(args.suite, args.tasks, args.fewshot)
    include += args.include_path
    lmeval.require()
    quiet_libraries()
    rows_out = {}
    if args.run:
        rows_out, what = eval_run(Path(args.run), shots, include, args)
    else:
        data = args.data or str(checkout_file("assets", "data", "mgsm-ja", "test.jsonl",
                                              what="no --data given, and the miniature world's MGSM-ja test"))
        items = list(mgsm.load_mgsm(data, args.split))[:args.limit]
        what = f"MGSM-ja: {args.protocol} protocol on {data} ({len(items)} items)"
        from .checkpoint import check_model_folder
        from .hub import resolve_model
        for ref in args.model:                  # a VLM, a broken config.json: named before any scoring
            check_model_folder(resolve_model(ref), ref)
        for ref in args.model:
            model, tok = load_for_eval(ref, args)
            _, res = score_mgsm(model, tok, items, args)
            rows_out[ref] = {"mgsm": res[args.protocol]["accuracy"],
                             "lmeval": lmeval.evaluate(model, tok, shots, include, args.limit, args.batch_size)}
    shots_text = ", ".join(f"{t} {'default' if n is None else n}-shot" for t, n in shots.items())
    print(f"{what}; lm-eval {args.suite or args.tasks}: {shots_text}" + (f", first {args.limit} items" if args.limit
                                                                           else ""))
    print(lmeval.table(rows_out))
    if args.json:
        write_atomic(args.json, json.dumps({"suite": args.suite, "tasks": shots, "limit": args.limit,
                                            "models": rows_out}, ensure_ascii=False, indent=1))
    return 0


def eval_run(out: Path, shots: dict, include: list, args) -> tuple:
    """A finished run's base, sources and evolved model, scored with lm-eval in the run's own workbench (the
    best recipe merged into its resident model, as during the search); MGSM-ja: the report's test scores."""
    import json

    from . import lmeval
    from .search.pool import LocalPool, with_threads
    from .search.runfolder import stored_config
    report = out / "report.json"
    if not report.is_file():
        raise FileNotFoundError(f"--run {out}: no report.json (not a run folder, or its run has not finished)")
    data = json.loads(report.read_text())
    if "ps" in data:
        raise ValueError(f"--run {out}: a PS+DFS run; name one of its phases (--run {out / 'ps'} or {out / 'dfs'})")
    cfg = with_threads(stored_config(out))
    pool = LocalPool.open(cfg, log=lambda *a: None)
    bench = pool.bench
    if getattr(bench.processor, "image_processor", None) is not None:
        raise ValueError(f"--run {out}: a VLM run; lm-eval's tasks here score causal LMs")
    refs = bench.reference_models()
    models = {k: refs[k] for k in ["base", *cfg.refs] if k in refs}
    models["evolved (best recipe, in memory)"] = lambda: bench.candidate(data["best"]["parameters"])
    test = {k: r["test"]["score"] for k, r in data["rows"].items()}
    test["evolved (best recipe, in memory)"] = data["rows"].get("evolved (best/model)", {}).get("test", {}).get("score")
    rows = {label: {"mgsm": test.get(label), "lmeval": lmeval.evaluate(make(), bench.processor, shots, include,
                                                                       args.limit, args.batch_size)}
            for label, make in models.items()}
    return rows, f"{out}: MGSM-ja test scores from its report ({data['test_items']} items, task {data['task']})"


def protocol_table(res: dict) -> str:
    """Rates per protocol: accuracy with the language rule (the paper's `acc_ja`), without it (`acc`)."""
    lines = ["| protocol | accuracy (acc_ja) | number right (acc) | Japanese |", "|---|---:|---:|---:|"]
    lines += [f"| {p} | {r['accuracy']:.1f} | {r['number_correct']:.1f} | {r['lang_rate']:.1f} |" for p, r in res.items()]
    return "\n".join(lines)


def cmd_merge_recipe(args) -> int:
    from .engine.disk import run_merge
    from .recipe import load_recipe
    recipe = load_recipe(args.recipe)
    s = run_merge(recipe, args.out, device=args.device or "cpu", seed=args.seed or 0, force=args.force,
                  allow_pickle=args.allow_pickle, shard_bytes=args.shard_size, progress=not args.quiet,
                  license=args.license)
    print(f"merged {s['tensors']} tensors ({s['bytes'] / 1e6:.1f} MB in {s['shards']} shard(s)) "
          f"from {s['models']} models with {recipe.merge_method} in {s['seconds']:.1f} s -> {s['out']}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`): handled as Ctrl-C, with exit status 143."""


def interrupted_code(e: BaseException) -> int:
    return 143 if isinstance(e, Terminated) else 130


def guarded(prog: str, command, args) -> int:
    """Run a command: input errors as one line (exit 2), Ctrl-C / SIGTERM as exit 130 / 143."""
    import signal

    def terminate(signum, frame):
        raise Terminated
    signal.signal(signal.SIGTERM, terminate)
    try:
        return command(args)
    except (ValueError, KeyError, FileExistsError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return interrupted_code(e)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return guarded("evollm", {"merge": cmd_merge, "eval": cmd_eval}[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
