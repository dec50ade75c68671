"""Fitness decoding, today's path against the new one, on the miniature world.

The workload of one search candidate in `make demo`: the first N items (default 200) of the world's
MGSM-ja fitness split with the ja-math prompt, greedy, 48 new tokens, the improved protocol's stop
strings, 128 per batch (configs/world-ja-math.yaml). For each model:

- old: HF `generate` in static batches (`evollm.generate.generate_static`, the path `generate()` took
  before evollm.decode), prompts in data order, each batch until its longest row stops;
- new: `evollm.generate.generate` (continuous batching in `evollm.decode`), with its per-tokenizer
  memo cleared before every run, so that each run pays its own set-up as a single call would.

The two are timed alternately in one process, `--repeats` times each; the table gives the median wall
times, their ratio, the tokens generated (kept in the outputs, EOS and stop tokens included), the token
positions each path computes (old: every row of a batch until its longest row stops, prompts padded to
the batch's longest; new: the shared prefix once, the padded prompt suffixes, one position per live row
per step), and whether every output text is identical.

Models: the world's sources, the committed searched recipe (assets/recipes/mgsm-ja-searched.yaml) and
DARE-TIES at the search's initial point (weights and densities 0.5), both merged in memory with seed 0.

With `--equality`, also the broad check: every model above plus math-b and a DFS model over ja and
math-a, on all 600 fitness and 250 test prompts (48 new tokens, improved stops; and 128 new tokens,
official stops, on the test prompts), the new path with 128 and with 16 slots against HF generate in
static batches: the number of output texts that differ.

    python benchmarks/decode.py [--threads 2] [--repeats 5] [--items 200] [--equality] [--device cpu]
                                [--out benchmarks/decode_cpu.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
MODELS = ("ja", "evolved", "initial", "math-a", "base")
DFS_HOPS = ((0, 0, 1.0), (0, 1, 1.0), (1, 1, 0.9), (0, 2, 1.1), (1, 2, 1.0), (1, 3, 1.2), (0, 3, 0.8))


def machine(device: str = "cpu") -> str:
    import torch
    import transformers
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    where = "CPU only" if device == "cpu" else torch.cuda.get_device_name(torch.device(device))
    return (f"{cpu}, {os.cpu_count()} cores, {where}; torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, transformers {transformers.__version__}, python {platform.python_version()}")


def load(name: str, device: str = "cpu"):
    """A world model by name: a source folder, a DARE-TIES merge of the sources made in memory, or
    `dfs`: a DFS model over ja (A) and math-a (B) along DFS_HOPS."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from evollm.engine.memory import InMemoryMerger
    from evollm.hub import load_causal_lm
    if name == "dfs":
        from evollm.dfs import Hop, build_dfs_model
        return build_dfs_model(load("ja", device), load("math-a", device), [Hop(*h) for h in DFS_HOPS])
    if name not in ("evolved", "initial"):
        return load_causal_lm(str(ASSETS / "models" / name), torch.float32, device)
    model = load_causal_lm(str(ASSETS / "models" / "base"), torch.float32, device)
    state = lambda m: {k: v.float() for k, v in load_file(ASSETS / "models" / m / "model.safetensors").items()}
    sources = {m: state(m) for m in ("ja", "math-a", "math-b")}
    if name == "evolved":
        recipe = yaml.safe_load((ASSETS / "recipes" / "mgsm-ja-searched.yaml").read_text())
        per_model = {Path(s["model"]).name: s["parameters"] for s in recipe["models"]}
    else:
        per_model = {m: {"weight": 0.5, "density": 0.5} for m in sources}
    InMemoryMerger(model, state("base"), sources, device=device).merge("dare_ties", {"normalize": False}, per_model,
                                                                       seed=0)
    return model


def old_positions(prompt_lens, new_lens, batch_size):
    """Token positions HF generate computes in static batches: each batch's rows padded to its longest
    prompt, then one position per row per step until its longest output stops."""
    total = 0
    for i in range(0, len(prompt_lens), batch_size):
        b = slice(i, i + batch_size)
        rows = len(prompt_lens[b])
        total += rows * max(prompt_lens[b]) + rows * (max(new_lens[b]) - 1)
    return total


def equality(tok, device, log) -> list:
    """Output texts of the new path that differ from HF generate's, over models, prompt sets, slots."""
    from evollm import decode
    from evollm.generate import generate_static, truncate_at
    from evollm.protocols import get
    from evollm.tasks import mgsm

    def prompts(split):
        with open(ASSETS / "data" / "mgsm-ja" / f"{split}.jsonl", encoding="utf-8") as f:
            return mgsm.prompts([json.loads(line) for line in f])
    improved, official = get("ja-math", "improved"), get("ja-math", "official")
    runs = [("fitness (600)", prompts("fitness"), 48, improved.stops),
            ("test (250)", prompts("test"), 48, improved.stops),
            ("test (250)", prompts("test"), 128, official.stops)]
    out = []
    for name in ("base", "ja", "math-a", "math-b", "evolved", "initial", "dfs"):
        model = load(name, device)
        for label, ps, n, stops in runs:
            ref = generate_static(model, tok, ps, max_new_tokens=n, batch_size=128, stops=list(stops))
            for slots in (128, 16):
                ids = decode.greedy(model, tok, ps, max_new_tokens=n, batch_size=slots, stops=list(stops))
                new = [truncate_at(t, stops) for t in tok.batch_decode(ids, skip_special_tokens=True)]
                differ = sum(a != b for a, b in zip(ref, new))
                out.append((name, label, n, "improved" if stops == improved.stops else "official", slots, differ,
                            len(ps)))
                log(f"equality: {out[-1]}")
    return out


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--equality", action="store_true", help="also run the broad equality check")
    ap.add_argument("--out", help="also write the report (markdown) here")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from evollm import decode
    from evollm.generate import generate, generate_static
    from evollm.hub import batch_tokenizer
    from evollm.protocols import get
    from evollm.tasks import mgsm

    protocol = get("ja-math", "improved")
    with open(ASSETS / "data" / "mgsm-ja" / "fitness.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(args.items))]
    prompts = mgsm.prompts(rows, protocol.prompt)
    tok = batch_tokenizer(str(ASSETS / "models" / "ja"))
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stops=list(protocol.stops))
    prompt_lens = [len(x) for x in tok(prompts)["input_ids"]]

    load_before = uptime()
    lines = []
    table = []
    for name in args.models.split(","):
        model = load(name, args.device)
        assert decode.unsupported(model, tok, kw["stops"]) is None
        generate_static(model, tok, prompts[:8], **dict(kw, batch_size=8))     # warm up both paths
        generate(model, tok, prompts[:8], **dict(kw, batch_size=8))
        times = {"old": [], "new": []}
        outs = {}
        for _ in range(args.repeats):
            for path, fn in (("old", generate_static), ("new", generate)):
                decode._MEMO.clear()
                t = time.perf_counter()
                out = fn(model, tok, prompts, **kw)
                times[path].append(time.perf_counter() - t)
                if outs.setdefault(path, out) != out:
                    raise SystemExit(f"{name}: the {path} path gave different outputs on a repeat")
        stats = {}
        ids = decode.greedy(model, tok, prompts, stats=stats, **kw)
        new_lens = [len(x) for x in ids]
        same = sum(a == b for a, b in zip(outs["old"], outs["new"]))
        t_old, t_new = statistics.median(times["old"]), statistics.median(times["new"])
        pos_new = stats["prefix_tokens"] + stats["prefill_tokens"] + stats["decode_rows"]
        table.append((name, t_old, t_new, t_old / t_new, sum(new_lens),
                      old_positions(prompt_lens, new_lens, args.batch_size), pos_new, same, len(prompts)))
        line = (f"{name}: old {t_old:.2f} s {[round(t, 2) for t in times['old']]}, new {t_new:.2f} s "
                f"{[round(t, 2) for t in times['new']]}, ratio {t_old / t_new:.2f}, identical {same}/{len(prompts)}, "
                f"stats {stats}")
        print(line, file=sys.stderr, flush=True)
        lines.append(line)
    load_after = uptime()
    checks = equality(tok, args.device, lambda m: print(m, file=sys.stderr, flush=True)) if args.equality else []

    out = [f"# Fitness decoding: HF generate in static batches vs evollm.decode ({args.device})", "",
           f"- machine: {machine(args.device)}",
           f"- load: before `{load_before}`; after `{load_after}`",
           f"- workload: the first {len(prompts)} items of assets/data/mgsm-ja/fitness.jsonl, ja-math prompt "
           f"(prompts of {min(prompt_lens)}-{max(prompt_lens)} tokens), greedy, {args.max_new_tokens} new tokens, "
           f"stop strings {list(protocol.stops)}, batch size {args.batch_size}, float32",
           f"- times: median of {args.repeats} runs of each path, alternating, in one process "
           f"(`python benchmarks/decode.py --threads {args.threads} --repeats {args.repeats}`)", "",
           "| model | old s | new s | ratio old/new | tokens generated | positions computed old | "
           "positions computed new | identical outputs |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t_old, t_new, ratio, gen, p_old, p_new, same, n in table:
        out.append(f"| {name} | {t_old:.2f} | {t_new:.2f} | {ratio:.2f} | {gen} | {p_old} | {p_new} | {same}/{n} |")
    t_old, t_new = sum(r[1] for r in table), sum(r[2] for r in table)
    out += [f"| all | {t_old:.2f} | {t_new:.2f} | {t_old / t_new:.2f} | {sum(r[4] for r in table)} | "
            f"{sum(r[5] for r in table)} | {sum(r[6] for r in table)} | "
            f"{sum(r[7] for r in table)}/{sum(r[8] for r in table)} |", "", "Runs:", ""]
    out += [f"- {line}" for line in lines]
    if checks:
        out += ["", "## Equality", "",
                "The new path against HF generate in static batches of 128 (texts as `generate` returns them):", "",
                "| model | prompts | new tokens | stop strings | slots | outputs that differ |",
                "|---|---|---:|---|---:|---:|"]
        out += [f"| {m} | {label} | {n} | {stops} | {slots} | {d}/{total} |"
                for m, label, n, stops, slots, d, total in checks]
        out += [f"| all | | | | | {sum(c[5] for c in checks)}/{sum(c[6] for c in checks)} |"]
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
