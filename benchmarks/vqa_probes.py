"""The lab notebook's VQA probes of attempts 7-10 (assets/README.md), on a world folder (CPU, 2 threads):

- `python benchmarks/vqa_probes.py --world W [--vlm DIR] [--lms BASE JA]`: task arithmetic of vlm-en's language tower and
  scene-ja at small vlm-en weights on the first 150 fitness items, ROUGE-L with the language rule (x100,
  24 new tokens), also with the images shuffled (every question asked about another item's image);
- `--accuracy`: exact short answers on 200 fitness-bucket scenes (colour, count, time, position questions):
  vlm-en asked in English, vlm-en asked in Japanese (does it understand the question? scored against the
  English answer), and the scene-ja tower (alone and with a quarter of vlm-en, or `--points`) asked in Japanese;
- `--by-type RUN`: ROUGE-L with the language rule (x100, the search's 32 new tokens) per question type on the
  held-out JA-VG-VQA test, for vlm-en, both language models as the tower, TIES d=0.5 and RUN's exported VLM;
- `--time-choice RUN`: does a model read the time of day? On the held-out test's time questions, the share
  (%) where the right one of the three answers (昼 / 夕方 / 夜, or daytime / evening / night asked in English)
  is the likeliest continuation of the prompt; the same models as `--by-type`, and vlm-en and the base as the
  tower asked in English (without RUN: the sources, towers and TIES only);
- `--text-lookups [--ask en]`: the two language models asked Japanese (or English) questions about test-bucket
  scenes described in text (English or Japanese facts), exact answers per question type (short Japanese ones;
  asked in English, the sentences of the base's English look-ups, "It is evening.").
"""

import argparse
import collections
import random
from pathlib import Path

import numpy as np
import torch

from evollm.protocols import get as get_protocol
from evollm.protocols.ja_vqa import VqaProtocol, item_scores, language_rule
from evovlm.infer import generate_answers, load_vlm
from evovlm.tasks import load_vqa
from miniworld import formats, report
from miniworld import scenes as S

POINTS = [(0, 1, False), (0, 1, True), (0.1, 1, False), (0.2, 1, False), (0.3, 1, False), (0.4, 1, False),
          (0.3, 1, True), (0.2, 0.8, False), (0.3, 0.8, False)]
ACCURACY_POINTS = [(0.0, 1.0, False), (0.25, 1.0, False)]


def point(text: str) -> tuple:
    """`WV,WJ` or `WV,WJ,s` (s: images shuffled) -> (vlm-en weight, Japanese model weight, shuffled)."""
    parts = text.split(",")
    if len(parts) not in (2, 3) or parts[2:] not in ([], ["s"]):
        raise argparse.ArgumentTypeError(f"{text!r}: expected WV,WJ or WV,WJ,s")
    return float(parts[0]), float(parts[1]), parts[2:] == ["s"]


def accuracy(vlm, proc, merger, ja: str, points=ACCURACY_POINTS, n: int = 200):
    rng = random.Random(0)
    items = []
    for sc in S.scenes_for("fitness", n, 0):
        en, jq = S.qa_en(sc, short=True), S.qa_ja(sc)
        i = rng.choice([i for i, (t, _, _) in enumerate(jq) if t in ("color", "count", "where", "time")])
        items.append((S.render(sc), en[i], jq[i]))
    ask = lambda system: VqaProtocol("probe", lambda q: formats.chat(q, system, image=True),
                                     generation={"num_beams": 1, "max_new_tokens": 8}, dtype="float32", batch_size=50)

    def exact(preds, which):
        by = collections.defaultdict(list)
        for p, it in zip(preds, items):
            t, _, gold = it[which]
            by[t].append(p.strip().split("\n")[0].rstrip("。.") == gold)
        return {t: round(100 * sum(v) / len(v)) for t, v in sorted(by.items())}, round(100 * sum(map(sum, by.values())) / n)

    imgs = [im for im, _, _ in items]
    merger.merge("task_arithmetic", {}, {"vlm-en": {"weight": 1.0}, ja: {"weight": 0.0}})
    p = generate_answers(vlm, proc, imgs, [e[1] for _, e, _ in items], ask(formats.SYSTEM_EN), max_new_tokens=8)
    print("vlm-en asked in English, exact:", exact(p, 1), flush=True)
    p = generate_answers(vlm, proc, imgs, [j[1] for _, _, j in items], ask(formats.SYSTEM_JA), max_new_tokens=8)
    print("vlm-en asked in Japanese, exact against the English answer:", exact(p, 1), flush=True)
    for wv, wj, _ in points:
        merger.merge("task_arithmetic", {}, {"vlm-en": {"weight": wv}, ja: {"weight": wj}})
        p = generate_answers(vlm, proc, imgs, [j[1] for _, _, j in items], ask(formats.SYSTEM_JA), max_new_tokens=8)
        print(f"vlm-en {wv} + {ja} {wj} asked in Japanese, exact:", exact(p, 2), flush=True)


@torch.no_grad()
def text_lookups(world: Path, lms, n: int = 80, ask: str = "ja"):
    """Exact answers per question type to questions in language `ask` about a test-bucket scene *described in
    text* (English or Japanese facts, `scene_text`), in the chat turn of the base's look-ups: can the language
    models read a scene from a text at all?"""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from miniworld.scene_text import facts_en, facts_ja
    tok = AutoTokenizer.from_pretrained(world / "tokenizer")
    tok.padding_side = "left"
    rng, rows = random.Random(1), []
    qa, system, new = (S.qa_ja, formats.SYSTEM_JA, 10) if ask == "ja" else (S.qa_en, formats.SYSTEM_EN, 24)
    for sc in S.scenes_for("test", n, 0):
        for t, q, a in qa(sc):
            if t not in ("describe", "fact"):
                rows.append((t, q, a, facts_en(sc, rng), facts_ja(sc, rng)))
    print("| model | description | " + " | ".join(sorted({r[0] for r in rows})) + " |")
    print("|---|---|" + "---:|" * len({r[0] for r in rows}))
    for name in lms:
        model = AutoModelForCausalLM.from_pretrained(world / "models" / name, dtype=torch.float32).eval()
        for lang, col in (("English", 3), ("Japanese", 4)):
            by = collections.defaultdict(list)
            for i in range(0, len(rows), 64):
                part = rows[i:i + 64]
                enc = tok([formats.chat(f"{r[col]}\n{r[1]}", system) for r in part], return_tensors="pt", padding=True)
                out = model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
                for r, o in zip(part, out[:, enc["input_ids"].shape[1]:]):
                    by[r[0]].append(tok.decode(o, skip_special_tokens=True).strip() == r[2])
            print(f"| {name} | {lang} | " + " | ".join(f"{100 * np.mean(by[t]):.0f}" for t in sorted(by)) + " |",
                  flush=True)


def test_rows(world: Path) -> list:
    return load_vqa(str(world / "data" / "ja-vg-vqa-500" / "test.parquet"))


def compare(vlm, merger, run: Path, lms, score, english=False) -> dict:
    """{model: score(model, language asked)} for vlm-en, both language models as the tower, TIES d=0.5 and
    RUN's exported VLM, asked in Japanese; `english`: also vlm-en and the base as the tower asked in English."""
    base, ja = lms
    ta = lambda wv, wj: ("task_arithmetic", {"vlm-en": {"weight": wv}, ja: {"weight": wj}})
    cols = [("vlm-en", "ja", ta(1.0, 0.0)), (f"{base} tower", "ja", ta(0.0, 0.0)),
            (f"{ja} tower", "ja", ta(0.0, 1.0)),
            ("TIES d=0.5", "ja", ("ties", {n: {"weight": 1.0, "density": 0.5} for n in ("vlm-en", ja)}))]
    if english:
        cols = [("vlm-en asked in English", "en", ta(1.0, 0.0)), cols[0],
                (f"{base} tower asked in English", "en", ta(0.0, 0.0)), *cols[1:]]
    scores = {}
    for name, lang, (method, per) in cols:
        merger.merge(method, {}, per)
        scores[name] = score(vlm, lang)
    if run:
        scores["evolved"] = score(load_vlm(run / "best" / "model", "cpu")[0], "ja")
    return scores


def by_type(world: Path, run: Path, vlm, proc, merger, lms):
    """Per-question-type scores (see the module docstring): where a merge gains, and what no model reads."""
    rows = test_rows(world)
    types = [S.question_type_ja(r["question"]) for r in rows]
    refs, protocol = [r["answer"] for r in rows], get_protocol("ja-vqa", "world")

    def score(model, _lang):
        preds = generate_answers(model, proc, [r["image"] for r in rows], [r["question"] for r in rows], protocol,
                                 batch_size=50, max_new_tokens=32)
        return 100 * item_scores(language_rule(preds, refs), refs)["rougeL"][:, 2]
    scores = compare(vlm, merger, run, lms, score)
    print("| question type | items | " + " | ".join(scores) + " |")
    print("|---|---:|" + "---:|" * len(scores))
    for t in [*sorted(set(types)), "all"]:
        idx = [i for i, x in enumerate(types) if t in (x, "all")]
        print(f"| {t} | {len(idx)} | " + " | ".join(f"{np.mean(v[idx]):.1f}" for v in scores.values()) + " |")


@torch.no_grad()
def answer_logprobs(model, proc, images, prompt: str, answers) -> torch.Tensor:
    """(items, answers) log-probabilities of each answer (after a space, as the world's models answer)
    following `prompt` about each image, teacher-forced."""
    tok, out = proc.tokenizer, []
    for a in answers:
        n = len(tok(f"{prompt} {a}")["input_ids"]) - len(tok(prompt)["input_ids"])
        enc = proc(images=[im.convert("RGB") for im in images], text=[f"{prompt} {a}"] * len(images),
                   return_tensors="pt")
        logp = model(**enc).logits[:, -n - 1:-1].float().log_softmax(-1)
        out.append(logp.gather(2, enc["input_ids"][:, -n:, None]).sum((1, 2)))
    return torch.stack(out, 1)


def time_choice(world: Path, run: Path, vlm, proc, merger, lms):
    """Forced-choice reading of the time of day (see the module docstring)."""
    rows = [r for r in test_rows(world) if S.question_type_ja(r["question"]) == "time"]
    answers = {"ja": [S.TIMES_JA[t] for t in S.TIMES], "en": [S.TIMES_EN[t] for t in S.TIMES]}
    images, gold = [r["image"] for r in rows], torch.tensor([answers["ja"].index(r["answer"]) for r in rows])
    en_question = next(q for t, q, _ in S.qa_en(S.random_scene(random.Random(0))) if t == "time")
    prompts = {"ja": get_protocol("ja-vqa", "world").prompt(rows[0]["question"]),
               "en": formats.chat(en_question, formats.SYSTEM_EN, image=True)}

    def share(model, lang):
        logp = answer_logprobs(model, proc, images, prompts[lang], answers[lang])
        return 100.0 * (logp.argmax(1) == gold).float().mean().item()
    scores = compare(vlm, merger, run, lms, share, english=True)
    print(f"time-of-day questions: {len(rows)} (a constant answer is right on at most "
          f"{100 * max(torch.bincount(gold).tolist()) / len(rows):.1f}%)")
    print("| model | right answer likeliest (%) |\n|---|---:|")
    for name, v in scores.items():
        print(f"| {name} | {v:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="assets")
    ap.add_argument("--vlm", help="a vlm-en folder other than WORLD/models/vlm-en (built from the same scene-base)")
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--by-type", metavar="RUN", type=Path, help="an evovlm merge run folder on this world")
    ap.add_argument("--time-choice", metavar="RUN", nargs="?", const="", help="an evovlm merge run folder on "
                    "this world (without one: the sources, towers and TIES only)")
    ap.add_argument("--text-lookups", action="store_true", help="the language models asked about scenes described "
                    "in text (exact answers per question type)")
    ap.add_argument("--ask", choices=("ja", "en"), default="ja", help="--text-lookups: the questions' language")
    ap.add_argument("--lms", nargs=2, default=list(report.VQA_LMS), metavar=("BASE", "JA"),
                    help="the base and the Japanese model under WORLD/models (attempt 7: scene-base scene-ja)")
    ap.add_argument("--points", nargs="+", type=point, metavar="WV,WJ[,s]",
                    help="task-arithmetic weights to probe (vlm-en, the Japanese model; s: images shuffled); "
                         "defaults: attempt 7's small vlm-en weights, for --accuracy 0,1 and 0.25,1")
    args = ap.parse_args()
    if args.ask != "ja" and not args.text_lookups:
        ap.error("--ask applies to --text-lookups only")
    torch.set_num_threads(2)
    world = Path(args.world)
    if args.text_lookups:
        text_lookups(world, args.lms, ask=args.ask)
    elif args.accuracy or args.by_type or args.time_choice is not None:
        vlm, proc, merger = report._vqa_merger(world, "cpu", args.vlm, tuple(args.lms))
        if args.by_type:
            by_type(world, args.by_type, vlm, proc, merger, tuple(args.lms))
        elif args.time_choice is not None:
            time_choice(world, args.time_choice and Path(args.time_choice), vlm, proc, merger, tuple(args.lms))
        else:
            accuracy(vlm, proc, merger, args.lms[1], args.points or ACCURACY_POINTS)
    else:
        report.vqa_grid(world, args.vlm, items=150, points=args.points or POINTS, lms=tuple(args.lms), splits=("fit",))


if __name__ == "__main__":
    main()
