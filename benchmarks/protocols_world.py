"""The miniature world's sources and evolved models under both protocols of each benchmark, side by side.

Japanese math (the world's MGSM-ja test, 250 items): one generation per model at the official settings
(greedy, up to 1024 new tokens, the official stop strings), scored under the official protocol and under
the improved one; every item where the verdicts differ is put down to its cause (the improved protocol's
extra stop string cut the text, the language verdict differs, or the number read differs).
Japanese VQA (the world's JA-VG-VQA test, 200 items, and In-the-Wild copy, 50): each model answers
under the world's protocol (its training prompt, greedy, float32) and under the official one (`<<SYS>>`
prompt, fp16, 5 beams, repetition penalty 1.5, 512 new tokens); both scored as the official code does.
The evolved models are the committed recipes (assets/recipes/*-searched.yaml) merged with seed 0.

    python benchmarks/protocols_world.py [--out benchmarks/protocols_world.md] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
MATH_MODELS = ("base", "ja", "math-a", "math-b")
VLM_MODELS = ("vlm-en",)


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU only"


def cause(a: dict, b: dict) -> str:
    """Why two protocols' verdicts on one item differ (a: official, b: improved)."""
    if a["output"] != b["output"]:
        return "cut"            # the improved protocol's extra stop string `### 指示` cut the text
    if a["in_lang"] != b["in_lang"]:
        return "language"       # newlines removed (official) vs read as spaces (improved)
    return "reading"            # the number read differs


def math_rows(models: dict, limit, log) -> list:
    from evollm.hub import batch_tokenizer, load_causal_lm
    from evollm.tasks import mgsm
    import torch
    rows = mgsm.load_rows(str(ASSETS / "data" / "mgsm-ja" / "test.jsonl"), limit=limit)
    out = []
    for label, path in models.items():
        tok = batch_tokenizer(str(path))
        model = load_causal_lm(str(path), torch.float32, "cpu")
        t0 = time.time()
        outs = mgsm.generate_outputs(model, tok, rows, ["official", "improved"], batch_size=64)
        secs = time.time() - t0
        res = {p: mgsm.score_outputs(outs, rows, p) for p in ("official", "improved")}
        pairs = list(zip(res["official"]["items"], res["improved"]["items"]))
        causes = {}
        examples = []
        for (a, b), row in zip(pairs, rows):
            if a["correct"] != b["correct"]:
                c = cause(a, b)
                causes[c] = causes.get(c, 0) + 1
                if len([e for e in examples if e["cause"] == c]) < 1:
                    examples.append({"cause": c, "answer_number": row["answer_number"], "official_read": a["answer"],
                                     "improved_read": b["answer"], "official_text": a["output"][-120:],
                                     "improved_text": b["output"][-120:]})
        tokens = [len(tok(o)["input_ids"]) for o in outs]
        out.append({"model": label, "official": {k: res["official"][k] for k in ("accuracy", "number_correct", "lang_rate")},
                    "improved": {k: res["improved"][k] for k in ("accuracy", "number_correct", "lang_rate")},
                    "differ": sum(a["correct"] != b["correct"] for a, b in pairs), "causes": causes,
                    "examples": examples, "seconds": round(secs, 1), "mean_tokens": sum(tokens) / len(tokens),
                    "items": len(rows)})
        log(f"math {label}: official {out[-1]['official']['accuracy']:.1f}, improved {out[-1]['improved']['accuracy']:.1f}, "
            f"{out[-1]['differ']} differ {causes} ({secs:.0f} s)")
    return out


def vqa_rows(models: dict, limit, log) -> list:
    from evovlm.bench import run_bench
    out = []
    for label, path in models.items():
        for proto in ("world", "official"):
            t0 = time.time()
            res = run_bench([str(path)], ["world-vqa", "world-culture"], limit=limit, protocol=proto, log=lambda *a: None)
            r = res[str(path)]
            for task, x in r.items():
                preds = [p["prediction"] for p in x["predictions"]]
                out.append({"model": label, "task": task, "protocol": proto, "dtype": x["dtype"],
                            **{k: x[k] for k in ("rouge1", "rouge2", "rougeL", "rouge1_ja", "rouge2_ja", "rougeL_ja")},
                            "mean_chars": sum(map(len, preds)) / len(preds), "example": x["predictions"][0],
                            "seconds": x["seconds"]})
            log(f"vqa {label} {proto}: " + ", ".join(f"{o['task']} rougeL_ja {o['rougeL_ja']:.1f}"
                                                     for o in out[-len(r):]) + f" ({time.time() - t0:.0f} s)")
    return out


def render(math: list, vqa: list, header: str) -> str:
    lines = [header, "",
             "## Japanese math (world MGSM-ja test): one generation, two protocols", "",
             "accuracy = number right AND Japanese (the paper's `acc_ja`); number right = the official `acc`.", "",
             "| model | official accuracy | official number right | official Japanese | improved accuracy | "
             "improved number right | improved Japanese | items scored differently (cause) | mean new tokens |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in math:
        o, i = r["official"], r["improved"]
        causes = ", ".join(f"{n} {c}" for c, n in sorted(r["causes"].items())) or "none"
        lines.append(f"| {r['model']} | {o['accuracy']:.1f} | {o['number_correct']:.1f} | {o['lang_rate']:.1f} | "
                     f"{i['accuracy']:.1f} | {i['number_correct']:.1f} | {i['lang_rate']:.1f} | {r['differ']} ({causes}) | "
                     f"{r['mean_tokens']:.0f} |")
    lines += ["", "Causes: `cut` = the improved protocol's extra stop string `### 指示` cut the text before a "
              "second instruction the model wrote (the official text goes on, and its last number is read from "
              "there); `language` = lid.176 judged the text differently with newlines removed (official) than "
              "with newlines as spaces (improved); `reading` = the two readings took another number from the same "
              "text. One example per model and cause:", ""]
    for r in math:
        for e in r["examples"]:
            lines.append(f"- {r['model']} ({e['cause']}; answer {e['answer_number']}; official read "
                         f"{e['official_read']}, improved read {e['improved_read']}): official text ends "
                         f"{json.dumps(e['official_text'], ensure_ascii=False)}"
                         + ("" if e["official_text"] == e["improved_text"] else
                            f", improved text ends {json.dumps(e['improved_text'], ensure_ascii=False)}"))
    lines += ["", "## Japanese VQA (world copies): two protocols, official scoring", "",
              "| model | task | protocol | dtype | rouge1 | rouge2 | rougeL | rouge1_ja | rouge2_ja | rougeL_ja | "
              "mean answer chars | seconds |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in vqa:
        lines.append(f"| {r['model']} | {r['task']} | {r['protocol']} | {r['dtype']} | {r['rouge1']:.1f} | {r['rouge2']:.1f} | "
                     f"{r['rougeL']:.1f} | {r['rouge1_ja']:.1f} | {r['rouge2_ja']:.1f} | {r['rougeL_ja']:.1f} | "
                     f"{r['mean_chars']:.0f} | {r['seconds']:.0f} |")
    lines += ["", "First answer of each (question, reference, prediction):", ""]
    for r in vqa:
        if r["task"] == "world-vqa":
            e = r["example"]
            lines.append(f"- {r['model']}, {r['protocol']}: {e['question']} / {e['answer']} / "
                         f"{json.dumps(e['prediction'], ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "protocols_world.md"))
    ap.add_argument("--limit", type=int, help="first N items of each data set (a quick check)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evollm.cli import quiet_libraries
    from evollm.engine.disk import run_merge
    from evollm.recipe import load_recipe
    from evovlm.export import merge_vlm
    quiet_libraries()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run_merge(load_recipe(ASSETS / "recipes" / "mgsm-ja-searched.yaml"), Path(tmp) / "math", seed=0, progress=False)
        merge_vlm(load_recipe(ASSETS / "recipes" / "vqa-ja-searched.yaml"), Path(tmp) / "vlm", seed=0, log=lambda *a: None)
        math = math_rows({**{m: ASSETS / "models" / m for m in MATH_MODELS},
                          "evolved (mgsm-ja-searched.yaml)": Path(tmp) / "math"}, args.limit, log)
        vqa = vqa_rows({**{m: ASSETS / "models" / m for m in VLM_MODELS},
                        "evolved (vqa-ja-searched.yaml)": Path(tmp) / "vlm"}, args.limit, log)
    header = (f"# The world's models under both protocols\n\nCommand: `python benchmarks/protocols_world.py"
              f"{f' --limit {args.limit}' if args.limit else ''}` ({time.time() - t0:.0f} s). Machine: {machine()}.")
    text = render(math, vqa, header)
    from evollm.fsutil import write_atomic
    write_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
