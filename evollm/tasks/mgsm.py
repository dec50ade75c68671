"""Japanese math (MGSM-ja protocol): loader, answer extraction, the Japanese-answer rule, scoring.

One code path scores the real benchmark (`juletxara/mgsm`, config `ja`) and the miniature world's
files (same columns). An item counts as correct only if the last number of the output equals
`answer_number` AND the output is in the required language (fastText lid.176, P > 0.5).
"""

from __future__ import annotations

import os
import re
import unicodedata

from ..langid import lang_prob
from ..world.formats import MATH_STOPS, alpaca_en, alpaca_ja

REQUIRED_COLUMNS = ("question", "answer_number")


def load_mgsm(source: str = "juletxara/mgsm", split: str = "test", config: str = "ja"):
    """A hub id goes through `datasets.load_dataset(id, config)`; a local .jsonl/.json/.parquet file
    (the world's format) through the matching builder. Returns a `datasets.Dataset`."""
    import datasets
    if os.path.exists(source):
        kind = "parquet" if source.endswith(".parquet") else "json"
        ds = datasets.load_dataset(kind, data_files=source, split="train")
    else:
        ds = datasets.load_dataset(source, config, split=split)
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; MGSM format needs {list(REQUIRED_COLUMNS)}")
    return ds


_OFFICIAL = re.compile(r"\d+")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def extract_number(text: str, official: bool = False):
    """The last number in `text`, or None.

    official=True reproduces the official evaluation's reading (digits only: minus signs dropped,
    "1,000" read as 0). The default also reads full-width digits, thousands separators and negatives.
    """
    if official:
        found = _OFFICIAL.findall(text)
        return int(found[-1]) if found else None
    found = _NUMBER.findall(unicodedata.normalize("NFKC", text))
    if not found:
        return None
    v = float(found[-1].replace(",", ""))
    return int(v) if v.is_integer() else v


def score(output: str, answer_number, lang: str = "ja", official: bool = False) -> dict:
    num = extract_number(output, official)
    number_ok = num is not None and float(num) == float(answer_number)
    in_lang = lang_prob(output, lang) > 0.5
    return {"correct": number_ok and in_lang, "number_correct": number_ok, "in_lang": in_lang}


def prompts(rows) -> list[str]:
    """The MGSM-ja prompt (English Alpaca prompt for rows whose `lang` column says 'en')."""
    return [alpaca_en(r["question"]) if r.get("lang", "ja") == "en" else alpaca_ja(r["question"]) for r in rows]


def evaluate(model, tokenizer, rows, *, max_new_tokens: int = 96, batch_size: int = 64,
             official: bool = False) -> dict:
    """Greedy decode every row and score it; returns rates (x100) and the per-item outputs."""
    from ..generate import generate
    rows = list(rows)
    outs = generate(model, tokenizer, prompts(rows), max_new_tokens=max_new_tokens,
                    batch_size=batch_size, stops=MATH_STOPS)
    items = [dict(score(o, r["answer_number"], r.get("lang", "ja"), official), output=o) for o, r in zip(outs, rows)]
    n = max(len(items), 1)
    return {"accuracy": 100 * sum(i["correct"] for i in items) / n,
            "number_correct": 100 * sum(i["number_correct"] for i in items) / n,
            "lang_rate": 100 * sum(i["in_lang"] for i in items) / n, "items": items}
