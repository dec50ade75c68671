"""`evovlm bench`: the Japanese VLM benchmark suite, one or several models side by side.

Real benchmarks load by hub id (or from a local copy with `--data TASK=PATH`) and run under the
official protocol (`evollm.protocols.ja_vqa`: the `<<SYS>>` prompt, fp16, beam search with 5 beams,
repetition penalty 1.5, up to 512 new tokens, batches of 4; rouge1/2/L without and with the language
rule). The miniature world's copies run under the world's protocol (its own prompt, greedy, up to 64 new
tokens, float32), scored the same way. `protocol=` runs every task under one protocol. The bootstraps of
one model draw from one RNG seeded with `seed` (42, as the official `evaluate.py`), the tasks in order.
"""

from __future__ import annotations

import json
import time

from evollm.registry import Registry

#: task -> (default source: a hub id, a path, or a function returning one; split; default protocol).
#: Others come through the `evovlm.bench` entry points (the miniature world: world-vqa, world-culture).
SUITE = Registry("evovlm.bench", "benchmark task", {
    "ja-vg-vqa-500": ("SakanaAI/JA-VG-VQA-500", "test", "official"),
    "ja-vlm-wild": ("SakanaAI/JA-VLM-Bench-In-the-Wild", "test", "official"),
})


def run_bench(models, tasks, data=None, limit=None, device="cpu", batch_size=None, seed=42, log=print,
              progress=False, protocol=None, dtype=None) -> dict:
    """{model: {task: {protocol, dtype, rouge1, rouge2, rougeL, rouge1_ja, rouge2_ja, rougeL_ja, items, seconds,
    predictions}}}. Every model folder, data set and protocol is checked before the first model is scored."""
    import numpy as np

    from evollm.checkpoint import check_model_folder, dtype_from_name
    from evollm.datafiles import check_positive
    from evollm.hub import naming, resolve_model
    from evollm.engine.disk import check_device
    from evollm.protocols import get as get_protocol
    from evollm.protocols.ja_vqa import score
    from .infer import generate_answers, load_vlm
    from .tasks import load_vqa
    unknown = [t for t in tasks if t not in SUITE]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(SUITE.names())}")
    if not tasks:
        raise ValueError(f"no task given; known: {', '.join(SUITE.names())}")
    unused = [t for t in (data or {}) if t not in tasks]
    if unused:
        raise ValueError(f"--data names task(s) {unused} that are not among the tasks run ({', '.join(tasks)})")
    check_positive(limit, "--limit")
    check_positive(batch_size, "--batch-size")
    check_device(device)
    protos = {t: get_protocol("ja-vqa", protocol or SUITE.get(t)[2]) for t in tasks}
    dtypes = {t: dtype or protos[t].dtype for t in tasks}
    for d in set(dtypes.values()):
        dtype_from_name(d, "--dtype")
    paths = {m: resolve_model(m) for m in models}
    for m, path in paths.items():
        check_model_folder(path, m, kind="vlm")
    rows = {}
    for t in tasks:
        source, split, _ = SUITE.get(t)
        source = (data or {}).get(t) or (source() if callable(source) else source)
        rows[t] = load_vqa(source, split)[:limit]
    out = {}
    for m in models:
        out[m], rng, loaded = {}, np.random.RandomState(seed), {}
        for t in tasks:
            d = dtypes[t]
            if d not in loaded:
                loaded.clear()          # one copy of the model in memory at a time
                with naming(f"model {m}: transformers cannot load it with its processor from {paths[m]}"):
                    loaded[d] = load_vlm(paths[m], device, dtype_from_name(d))
            model, processor = loaded[d]
            t0 = time.time()
            preds = generate_answers(model, processor, [r["image"] for r in rows[t]], [r["question"] for r in rows[t]],
                                     protos[t], batch_size=batch_size, progress=progress)
            refs = [r["answer"] for r in rows[t]]
            out[m][t] = {"protocol": protos[t].name, "dtype": d, **score(preds, refs, rng), "items": len(refs),
                         "seconds": round(time.time() - t0, 1),
                         "predictions": [{"question": r["question"], "answer": r["answer"], "prediction": p}
                                         for r, p in zip(rows[t], preds)]}
            r = out[m][t]
            log(f"{m} {t} ({r['protocol']} protocol): ROUGE-1/2/L {r['rouge1']:.1f}/{r['rouge2']:.1f}/{r['rougeL']:.1f}, "
                f"with the language rule {r['rouge1_ja']:.1f}/{r['rouge2_ja']:.1f}/{r['rougeL_ja']:.1f}")
    return out


def table(res: dict, tasks) -> str:
    """ROUGE-L without and with the language rule (the paper's number), per model and task."""
    head = "| model | " + " | ".join(f"{t} ROUGE-L | {t} ROUGE-L (ja rule)" for t in tasks) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(tasks))]
    for m, r in res.items():
        lines.append(f"| {m} | " + " | ".join(f"{r[t]['rougeL']:.1f} | {r[t]['rougeL_ja']:.1f}" for t in tasks) + " |")
    first = next(iter(res.values()))
    lines.append("\nprotocols: " + ", ".join(f"{t} {first[t]['protocol']} ({first[t]['dtype']})" for t in tasks)
                 + "; every number (rouge1, rouge2, rougeL, each with and without the rule) is in --json")
    return "\n".join(lines)


def write_json(res: dict, path):
    from evollm.fsutil import write_atomic
    write_atomic(path, json.dumps(res, ensure_ascii=False, indent=1))
