"""The `ja-vqa` task: Japanese visual QA scored by ROUGE-L with the language rule (DESIGN.md 5).

Rows come from JA-VG-VQA-500 (`qas[0]`) or JA-VLM-Bench-In-the-Wild columns (a hub id, a local
parquet file, or a folder of `<split>.parquet`); answers are generated greedily in batches.
"""

from __future__ import annotations

import collections

import numpy as np

from evollm.langid import lang_prob
from evollm.datafiles import seeded_subset

from .data import _load, qa_items
from .metrics import rouge_l_ja


def load_vqa(source: str, split: str = "test") -> list:
    """[{image, question, answer}] from either benchmark's columns (detected from the data), at least one."""
    return qa_items(*_load(source, split, ("image",), "VQA data"))


class JaVqa:
    name = "ja-vqa"
    columns = (("rouge_l_raw", "ROUGE-L without the language rule"), ("lang_rate", "Japanese"))
    note = ("Score = ROUGE-L F x 100 on MeCab words (fugashi + unidic-lite), bootstrap mid value; an answer "
            "not in Japanese (fastText lid.176 P(ja) < 0.5) scores as empty.")
    score_label = "ROUGE-L"

    def __init__(self, cfg: dict, processor):
        self.cfg, self.processor = cfg, processor

    def rows(self, spec: dict, seed: int) -> list:
        return seeded_subset(load_vqa(spec["data"], spec["split"]), spec["limit"], seed)

    def predict(self, model, rows) -> list:
        from evollm.world.vlm import generate_answers
        return generate_answers(model, self.processor, [r["image"] for r in rows], [r["question"] for r in rows],
                                max_new_tokens=self.cfg["max_new_tokens"], batch_size=self.cfg["batch_size"],
                                repetition_penalty=self.cfg["repetition_penalty"])

    def score(self, model, rows) -> dict:
        preds = self.predict(model, rows)
        refs = [r["answer"] for r in rows]
        return {"score": rouge_l_ja(preds, refs), "rouge_l_raw": rouge_l_ja(preds, refs, language_rule=False),
                "lang_rate": 100 * float(np.mean([lang_prob(p) > 0.5 for p in preds])) if preds else 0.0,
                "examples": preds[:2]}

    def baselines(self, fit_rows, test_rows) -> list:
        const = collections.Counter(r["answer"] for r in fit_rows).most_common(1)[0][0]
        s = lambda rows: rouge_l_ja([const] * len(rows), [r["answer"] for r in rows])
        return [(f"constant answer ({const})", s(fit_rows), s(test_rows))]
