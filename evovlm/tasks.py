"""The `ja-vqa` task: Japanese visual QA scored by ROUGE-L with the language rule.

Rows come from JA-VG-VQA-500 (`qas[0]`) or JA-VLM-Bench-In-the-Wild columns (a hub id, a local
parquet file, or a folder of `<split>.parquet`); answers are generated in batches and scored as the
config's protocol says (`evollm.protocols.ja_vqa`: official, or the world's).
"""

from __future__ import annotations

import collections

import numpy as np

from evollm.datafiles import seeded_subset
from evollm.langid import lang_prob
from evollm.protocols import get as get_protocol
from evollm.protocols.ja_vqa import score as rouge_scores

from .data import _load, qa_items

def load_vqa(source: str, split: str = "test") -> list:
    """[{image, question, answer}] from either benchmark's columns (detected from the data), at least one."""
    return qa_items(*_load(source, split, ("image",), "VQA data"))


def shuffle_images(rows, seed: int) -> list:
    """`rows` with every image replaced by another row's (a derangement when there are two rows or more)."""
    order = np.random.RandomState(seed).permutation(len(rows))
    out = [dict(r) for r in rows]
    for i, j in zip(order, np.roll(order, -1)):
        out[i]["image"] = rows[j]["image"]
    return out


class JaVqa:
    name = "ja-vqa"
    columns = (("rouge_l_raw", "ROUGE-L without the language rule"), ("lang_rate", "Japanese"))
    score_label = "ROUGE-L"

    #: the VLM workbenches (evollm.search.workbench): a candidate is the VLM with a merged language tower
    workbenches = {"ps": "evovlm.search:VlmWorkbench", "dfs": "evovlm.search:VlmDfsWorkbench"}

    def __init__(self, cfg, processor):
        """`cfg`: the run config's `task` (evollm.search.config.TaskConfig)."""
        self.cfg, self.processor = cfg, processor
        self.protocol = get_protocol("ja-vqa", cfg.protocol)
        self.note = ("Score = ROUGE-L F x 100 on MeCab words (the official tokenizer), bootstrap mid value; an answer "
                     "not in Japanese (fastText lid.176 P(ja) < 0.5) scores as empty. Answers asked and generated as "
                     f"the {self.protocol.name} protocol says (evollm.protocols).")

    def rows(self, spec, seed: int) -> list:
        return seeded_subset(load_vqa(spec.data, spec.split), spec.limit, seed)

    def predict(self, model, rows) -> list:
        from evovlm.infer import generate_answers
        return generate_answers(model, self.processor, [r["image"] for r in rows], [r["question"] for r in rows],
                                self.protocol, batch_size=self.cfg.batch_size, **self.cfg.generation)

    def score(self, model, rows) -> dict:
        preds = self.predict(model, rows)
        s = rouge_scores(preds, [r["answer"] for r in rows], 0)
        return {"score": s["rougeL_ja"], "rouge_l_raw": s["rougeL"],
                "lang_rate": 100 * float(np.mean([lang_prob(p) > 0.5 for p in preds])) if preds else 0.0,
                "examples": preds[:2]}

    def controls(self, rows, seed: int) -> dict:
        """"images shuffled": every item asked about another item's image (a seeded cyclic shift over a
        seeded order, so no item keeps its own); a model that answers from the image loses there."""
        return {"images shuffled": shuffle_images(rows, seed)}

    def baselines(self, fit_rows, test_rows) -> list:
        const = collections.Counter(r["answer"] for r in fit_rows).most_common(1)[0][0]
        s = lambda rows: rouge_scores([const] * len(rows), [r["answer"] for r in rows], 0)["rougeL_ja"]
        return [(f"constant answer ({const})", s(fit_rows), s(test_rows))]
