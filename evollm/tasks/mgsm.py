"""Japanese math: the MGSM-ja loader, generation and scoring under a protocol (`evollm.protocols.mgsm_ja`).

One code path scores the real benchmark (`juletxara/mgsm`, config `ja`) and the miniature world's
files (same columns). An item counts as correct only if the number read from the output equals
`answer_number` AND the output is in the required language (fastText lid.176, P > 0.5).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..datafiles import load_data_file, load_hub_dataset, nonempty, read_text, seeded_subset
from ..hub import is_hub_id
from ..protocols.mgsm_ja import PROMPT_EN, PROMPT_JA

REQUIRED_COLUMNS = ("question", "answer_number")


def load_mgsm(source: str = "juletxara/mgsm", split: str = "test", config: str = "ja"):
    """A local .jsonl/.json/.parquet/.tsv/.csv file (the world's format, or MGSM's raw `question<TAB>answer`
    files), or else a hub id loaded with `datasets.load_dataset(id, config, split=split)` (config dropped
    for single-config sets such as SakanaAI/gsm8k-ja-test_250-1319). A GSM8K-style `answer`
    ("... #### 72") without `answer_number` gets its number. Returns a `datasets.Dataset` of at least one
    row whose questions are text and answers numbers; any fault is an error naming the source."""
    p = Path(source).expanduser()
    if p.exists():
        ds = _load_table(p) if p.suffix in (".tsv", ".csv") else load_data_file(p, source)
    elif p.suffix in (".jsonl", ".json", ".parquet", ".tsv", ".csv") or not is_hub_id(source):
        raise FileNotFoundError(f"{source}: no such data file (and not a hub id of the form org/name)")
    else:
        ds = load_hub_dataset(source, split, config)
    if "answer_number" not in ds.column_names and "answer" in ds.column_names:
        ds = ds.map(lambda r, i: {"answer_number": _gsm8k_number(r["answer"], f"{source}: row {i + 1}")},
                    with_indices=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; MGSM format needs {list(REQUIRED_COLUMNS)}")
    bad = next((i for i, q in enumerate(ds["question"]) if not isinstance(q, str) or not q.strip()), None)
    if bad is not None:
        raise ValueError(f"{source}: row {bad + 1}: question must be non-empty text, got {ds[bad]['question']!r:.60}")
    answers = ds["answer_number"]
    nums = [_num(v, f"{source}: row {i + 1}") for i, v in enumerate(answers)]
    if any(isinstance(v, str) for v in answers):      # numbers written as text
        ds = ds.remove_columns("answer_number").add_column("answer_number", nums)
    return ds


def _load_table(path: Path):
    """MGSM's raw TSV (two columns, no header) or a TSV/CSV with a header naming the columns."""
    import csv
    import io

    import datasets
    reader = csv.reader(io.StringIO(read_text(path)), delimiter="\t" if path.suffix == ".tsv" else ",")
    rows = [(reader.line_num, r) for r in reader if r]           # (line number, fields), blank lines skipped
    if "question" in rows[0][1]:
        head, rows = rows[0][1], rows[1:]
    else:
        head = ["question", "answer_number"]
    bad = [n for n, r in rows if len(r) != len(head)]
    if bad:
        raise ValueError(f"{path}: line(s) {bad[:5]} do not have {len(head)} columns ({head})")
    data = {h: [r[i] for _, r in rows] for i, h in enumerate(head)}
    if "answer_number" in data:
        data["answer_number"] = [_num(r[head.index("answer_number")], f"{path}: line {n}") for n, r in rows]
    return nonempty(datasets.Dataset.from_dict(data), str(path))


def _num(v, where: str):
    """``v`` (a number, or a number written as text, commas allowed) as an int or float; finite."""
    try:
        x = v if isinstance(v, (int, float)) and not isinstance(v, bool) else float(str(v).replace(",", ""))
    except ValueError:
        raise ValueError(f"{where}: answer_number {v!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: answer_number {v!r} is not a finite number")
    return int(x) if float(x).is_integer() else x


def _gsm8k_number(answer: str, where: str):
    if "####" not in str(answer):
        raise ValueError(f"{where}: no `answer_number` column and the `answer` has no '#### N' line: {answer!r:.80}")
    return _num(str(answer).split("####")[-1].strip(), where)


def load_rows(source: str, split: str = "test", config: str = "ja", limit: int = None, seed: int = 0) -> list:
    """Rows of a data set; with `limit`, a seeded random subset of that size (in data order)."""
    return seeded_subset(list(load_mgsm(source, split, config)), limit, seed)


def protocol(name):
    """An MGSM-ja protocol by name ('official' or 'improved'), or the protocol itself."""
    from ..protocols import get
    return get("ja-math", name) if isinstance(name, str) or name is None else name


def score(output: str, answer_number, lang: str = "ja", protocol_name="improved") -> dict:
    """One output scored under a protocol (see `evollm.protocols.mgsm_ja`)."""
    return protocol(protocol_name).score(output, answer_number, lang)


def prompts(rows, prompt: str = PROMPT_JA) -> list[str]:
    """The MGSM-ja prompt (the English Alpaca prompt for rows whose `lang` column says 'en')."""
    return [(PROMPT_EN if r.get("lang", "ja") == "en" else prompt).format(question=r["question"])
            for r in rows]


def generate_outputs(model, tokenizer, rows, protocols, *, batch_size: int = 64, progress: bool = False,
                     **generation) -> list[str]:
    """One generation that every protocol in `protocols` can score: it stops only at the stop strings
    they share (each protocol cuts its own others when scoring). `generation` (max_new_tokens,
    repetition_penalty, num_beams) overrides the protocols' settings where not None."""
    from ..generate import generate
    protocols = [protocol(p) for p in protocols]
    first = protocols[0]
    if any(p.prompt != first.prompt or p.generation != first.generation for p in protocols):
        raise ValueError("protocols with different prompts or generation settings need one generation each")
    stops = [s for s in first.stops if all(s in p.stops for p in protocols)]
    gen = {**first.generation, **{k: v for k, v in generation.items() if v is not None}}
    extra = {k: gen[k] for k in ("num_beams", "repetition_penalty") if gen[k] != 1}
    return generate(model, tokenizer, prompts(rows, first.prompt), max_new_tokens=gen["max_new_tokens"],
                    batch_size=batch_size, stops=stops, progress=progress, **extra)


def score_outputs(outputs, rows, protocol_name="improved") -> dict:
    """Rates x100 under a protocol: `accuracy` (number right AND in the row's language: the paper's
    `acc_ja`), `number_correct` (the official `acc`), `lang_rate`; and every item."""
    p = protocol(protocol_name)
    items = [dict(p.score(o, r["answer_number"], r.get("lang", "ja")), output=p.cut(o)) for o, r in zip(outputs, rows)]
    n = max(len(items), 1)
    return {"protocol": p.name, "accuracy": 100 * sum(i["correct"] for i in items) / n,
            "number_correct": 100 * sum(i["number_correct"] for i in items) / n,
            "lang_rate": 100 * sum(i["in_lang"] for i in items) / n, "items": items}


def evaluate(model, tokenizer, rows, *, protocol_name="improved", batch_size: int = 64, progress: bool = False,
             **generation) -> dict:
    """Decode every row (the protocol's settings, `generation` overriding) and score it."""
    rows = list(rows)
    outs = generate_outputs(model, tokenizer, rows, [protocol_name], batch_size=batch_size, progress=progress,
                            **generation)
    return score_outputs(outs, rows, protocol_name)


def compare(results: dict) -> dict:
    """Where protocols disagree, from `score_outputs` results of one generation: per pair of protocols,
    the items whose verdict differs, and why (the number read, the language, the text cut)."""
    names = list(results)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs = list(zip(results[a]["items"], results[b]["items"]))
            out[f"{a} vs {b}"] = {
                "verdict": sum(x["correct"] != y["correct"] for x, y in pairs),
                "number_read": sum(x["answer"] != y["answer"] for x, y in pairs),
                "number_verdict": sum(x["number_correct"] != y["number_correct"] for x, y in pairs),
                "language_verdict": sum(x["in_lang"] != y["in_lang"] for x, y in pairs),
                "text_cut": sum(x["output"] != y["output"] for x, y in pairs)}
    return out


def answer_baselines(fit_rows, test_rows) -> dict:
    """What a model that ignores the question scores: always the most common fitness answer
    (constant), and a uniform guess over the test answers' range (chance), x100."""
    import collections
    mode = collections.Counter(r["answer_number"] for r in fit_rows).most_common(1)[0][0]
    rate = lambda rows: 100 * sum(r["answer_number"] == mode for r in rows) / max(len(rows), 1)
    answers = [r["answer_number"] for r in test_rows]
    return {"constant_answer": mode, "constant": rate(test_rows), "constant_fitness": rate(fit_rows),
            "chance": 100 / (max(answers) - min(answers) + 1)}


class JaMath:
    """The `ja-math` fitness/benchmark task of a run, scored under the config's MGSM-ja protocol."""
    name = "ja-math"
    columns = (("number_correct", "number right"), ("lang_rate", "Japanese"))
    score_label = "accuracy (%)"

    def __init__(self, cfg, tokenizer):
        """`cfg`: the run config's `task` (evollm.search.config.TaskConfig)."""
        self.cfg, self.tokenizer = cfg, tokenizer
        self.batch_size = cfg.batch_size          # a memory plan may lower it
        self.note = (f"Accuracy = last number right AND the answer in Japanese (fastText lid.176, P(ja) > 0.5), "
                     f"under the {protocol(cfg.protocol).name} MGSM-ja protocol (evollm.protocols.mgsm_ja).")

    def rows(self, spec, seed: int) -> list:
        """The rows of a data spec (`DataSpec`: data, split, config, limit)."""
        return load_rows(spec.data, spec.split, spec.config, spec.limit, seed)

    def score(self, model, rows) -> dict:
        c = self.cfg
        r = evaluate(model, self.tokenizer, rows, protocol_name=c.protocol, batch_size=self.batch_size, **c.generation)
        return {"score": r["accuracy"], "number_correct": r["number_correct"], "lang_rate": r["lang_rate"],
                "examples": [i["output"] for i in r["items"][:2]]}

    def longest_prompt(self, rows) -> int:
        """Tokens of the longest prompt of `rows` (for the memory plan)."""
        return max((len(x) for x in self.tokenizer(prompts(rows, protocol(self.cfg.protocol).prompt))["input_ids"]),
                   default=0)

    def baselines(self, fit_rows, test_rows) -> list:
        b = answer_baselines(fit_rows, test_rows)
        return [(f"constant answer ({b['constant_answer']})", b["constant_fitness"], b["constant"]),
                ("chance (uniform over the test answers' range)", None, b["chance"])]
