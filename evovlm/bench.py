"""`evovlm bench`: the Japanese VLM benchmark suite, one or several models side by side.

Real benchmarks load by hub id (or from a local copy with `--data TASK=PATH`) and run with the
official generation settings (Mistral `[INST]` prompt with the Japanese system message and `<image>`,
greedy, repetition penalty 1.5, up to 512 new tokens); the miniature world's copies run with the
settings the world was built for (up to 64 new tokens, no penalty).
"""

from __future__ import annotations

import json
import time

from evollm.search.config import ASSETS

OFFICIAL = {"max_new_tokens": 512, "repetition_penalty": 1.5}
WORLD = {"max_new_tokens": 64, "repetition_penalty": 1.0}
SUITE = {   # task -> (default source, split, generation settings)
    "ja-vg-vqa-500": ("SakanaAI/JA-VG-VQA-500", "test", OFFICIAL),
    "ja-vlm-wild": ("SakanaAI/JA-VLM-Bench-In-the-Wild", "test", OFFICIAL),
    "world-vqa": (str(ASSETS / "data" / "ja-vg-vqa-500" / "test.parquet"), "test", WORLD),
    "world-culture": (str(ASSETS / "data" / "ja-vlm-bench-in-the-wild" / "test.parquet"), "test", WORLD),
}


def run_bench(models, tasks, data=None, limit=None, device="cpu", batch_size=16, seed=0, log=print,
              progress=False) -> dict:
    """{model: {task: {rouge_l, rouge_l_ja, items, seconds, predictions}}}. Every model folder and data
    set is checked before the first model is scored."""
    from evollm.checkpoint import check_model_folder
    from evollm.datafiles import check_positive
    from evollm.hub import naming, resolve_model
    from evollm.merger import check_device
    from evollm.world.vlm import generate_answers, load_vlm
    from .metrics import rouge_l_ja
    from .tasks import load_vqa
    unknown = [t for t in tasks if t not in SUITE]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(SUITE)}")
    if not tasks:
        raise ValueError(f"no task given; known: {', '.join(SUITE)}")
    unused = [t for t in (data or {}) if t not in tasks]
    if unused:
        raise ValueError(f"--data names task(s) {unused} that are not among the tasks run ({', '.join(tasks)})")
    check_positive(limit, "--limit")
    check_positive(batch_size, "--batch-size")
    check_device(device)
    paths = {m: resolve_model(m) for m in models}
    for m, path in paths.items():
        check_model_folder(path, m, kind="vlm")
    rows = {}
    for t in tasks:
        source, split, _ = SUITE[t]
        rows[t] = load_vqa((data or {}).get(t, source), split)[:limit]
    out = {}
    for m in models:
        with naming(f"model {m}: transformers cannot load it with its processor from {paths[m]}"):
            model, processor = load_vlm(paths[m], device)
        processor.tokenizer.padding_side = "left"
        out[m] = {}
        for t in tasks:
            gen = SUITE[t][2]
            t0 = time.time()
            preds = generate_answers(model, processor, [r["image"] for r in rows[t]], [r["question"] for r in rows[t]],
                                     batch_size=batch_size, progress=progress, **gen)
            refs = [r["answer"] for r in rows[t]]
            out[m][t] = {"rouge_l": rouge_l_ja(preds, refs, seed=seed, language_rule=False),
                         "rouge_l_ja": rouge_l_ja(preds, refs, seed=seed), "items": len(refs),
                         "seconds": round(time.time() - t0, 1),
                         "predictions": [{"question": r["question"], "answer": r["answer"], "prediction": p}
                                         for r, p in zip(rows[t], preds)]}
            log(f"{m} {t}: ROUGE-L {out[m][t]['rouge_l']:.1f}, with the language rule {out[m][t]['rouge_l_ja']:.1f}")
    return out


def table(res: dict, tasks) -> str:
    head = "| model | " + " | ".join(f"{t} ROUGE-L | {t} ROUGE-L (ja rule)" for t in tasks) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(tasks))]
    for m, r in res.items():
        lines.append(f"| {m} | " + " | ".join(f"{r[t]['rouge_l']:.1f} | {r[t]['rouge_l_ja']:.1f}" for t in tasks) + " |")
    return "\n".join(lines)


def write_json(res: dict, path):
    from evollm.fsutil import write_atomic
    write_atomic(path, json.dumps(res, ensure_ascii=False, indent=1))
