"""Japanese VQA (JA-VG-VQA-500, JA-VLM-Bench-In-the-Wild), the whole protocol in one file.

OFFICIAL reproduces the public evaluation code of the paper (SakanaAI/evolutionary-model-merge:
`evomerge/eval/metrics.py`, `utils.py`, `ja_vg_vqa.py`, `ja_vlm_wild.py`, `evomerge/models/llava.py`,
`prompt_templates.py` `JA_SHISA_VQA`, `configs/vlm/*.yaml`, `evaluate.py`):

- data: `SakanaAI/JA-VG-VQA-500` split test (the first of each row's `qas`), and
  `SakanaAI/JA-VLM-Bench-In-the-Wild` split test (`question`, `answer`);
- prompt: `PROMPT` around `"<image>\\n" + question`, with the Japanese system message `SYSTEM`;
- generation: fp16 weights, beam search with 5 beams (no sampling), repetition penalty 1.5, at most
  512 new tokens, batches of 4; decoded without special tokens, with no clean-up of spaces, stripped;
- ROUGE: `rouge_score` rouge1, rouge2 and rougeL (no stemming) on words from `tokenize`: emoji removed
  (`emoji.is_emoji` per character, emoji 2.10.1, then the code-point ranges `_EMOJI_RANGES`),
  `neologdn.normalize` (0.5.2), runs of whitespace made one space, MeCab words (fugashi
  `Tagger("-Owakati")` with unidic-lite);
- aggregation: the bootstrap of `rouge_score.scoring.BootstrapAggregator` (1000 resamples of the
  items, 95% interval); the reported number is the median ("mid") F-measure x 100;
- language rule: where the reference is Japanese (lid.176 P(ja) >= 0.5, newlines removed, all labels)
  and the prediction is not (P(ja) < 0.5), the prediction scores as "";
- reported: rouge1, rouge2, rougeL without the rule, then rouge1_ja, rouge2_ja, rougeL_ja with it
  (the paper's table: rougeL_ja).
The bootstrap draws from numpy's legacy global RNG upstream, seeded once by `evaluate.py`
(`set_seed(42)`) and then consumed by each benchmark in turn (without the rule, then with it, each
rouge type in order). `score` takes an explicit `np.random.RandomState` and draws in that order, so
with `RandomState(42)` over the same predictions it returns the official numbers.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DATA = {"ja-vg-vqa-500": ("SakanaAI/JA-VG-VQA-500", "test"),
        "ja-vlm-wild": ("SakanaAI/JA-VLM-Bench-In-the-Wild", "test")}
SYSTEM = "あなたは役立つ、偏見がなく、検閲されていないアシスタントです。与えられた画像を下に、質問に答えてください。"
PROMPT = "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{input} [/INST]"
IMAGE = "<image>"
GENERATION = {"num_beams": 5, "repetition_penalty": 1.5, "max_new_tokens": 512}   # do_sample False
DTYPE = "float16"
BATCH_SIZE = 4
DECODE = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}       # then str.strip()
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95
SEED = 42
LANG_THRESHOLD = 0.5
LIBRARIES = {"emoji": "2.10.1", "neologdn": "0.5.2"}
_EMOJI_RANGES = re.compile("[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF"
                           "\U0001F1E0-\U0001F1FF\U00002702-\U000027B0]+")


def official_prompt(question: str) -> str:
    return PROMPT.format(system=SYSTEM, input=f"{IMAGE}\n{question}")


# --------------------------------------------------------------------------- tokenizer

@functools.lru_cache(maxsize=1)
def _libraries():
    """(emoji, neologdn), with a warning where a version other than the official one is installed."""
    import emoji
    import neologdn
    found = {"emoji": emoji.__version__, "neologdn": neologdn.__version__}
    if found != LIBRARIES:
        warnings.warn(f"the official ROUGE tokenizer needs emoji {LIBRARIES['emoji']} and neologdn "
                      f"{LIBRARIES['neologdn']}; found emoji {found['emoji']}, neologdn {found['neologdn']}: "
                      "scores can differ from the official ones on emoji and unusual characters", stacklevel=3)
    return emoji, neologdn


def normalize(text: str) -> str:
    """The official normalisation before MeCab: emoji out, neologdn, whitespace runs as one space."""
    emoji, neologdn = _libraries()
    text = _EMOJI_RANGES.sub("", "".join(c for c in text if not emoji.is_emoji(c)))
    return " ".join(neologdn.normalize(text).split())


class Tokenizer:
    """`rouge_score` tokenizer: `normalize`, then MeCab words (fugashi + unidic-lite, wakati output)."""

    def __init__(self):
        from fugashi import Tagger
        self._tagger = Tagger("-Owakati")

    def tokenize(self, text: str) -> list:
        return self._tagger.parse(normalize(text)).split()


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=Tokenizer())


# --------------------------------------------------------------------------- scoring

def language_rule(predictions, references, lang: str = "ja") -> list:
    """Predictions with "" for each one not in `lang` (P < 0.5) whose reference is (P >= 0.5)."""
    from ..langid import lang_prob
    return ["" if lang_prob(r, lang) >= LANG_THRESHOLD and lang_prob(p, lang) < LANG_THRESHOLD else p
            for p, r in zip(predictions, references)]


def _pairs(predictions, references):
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    return predictions, references


def item_scores(predictions, references) -> dict:
    """{rouge type: (n, 3) array of precision, recall, F-measure per item} (no language rule)."""
    predictions, references = _pairs(predictions, references)
    scored = [_scorer().score(r, p) for p, r in zip(predictions, references)]
    return {t: np.vstack([tuple(s[t]) for s in scored]) for t in ROUGE_TYPES}


def bootstrap_mid(matrix: np.ndarray, rng: np.random.RandomState, n_samples: int = BOOTSTRAP_SAMPLES) -> float:
    """Median over `n_samples` resamples (with replacement, each the size of the data) of the mean
    F-measure, x 100: the `mid` of rouge_score's BootstrapAggregator, drawn from `rng` in its order."""
    n = matrix.shape[0]
    means = np.zeros((n_samples, matrix.shape[1]))
    for i in range(n_samples):
        means[i, :] = np.mean(matrix[rng.choice(np.arange(n), size=n), :], axis=0)
    delta = (1 - CONFIDENCE) / 2
    return 100.0 * float(np.percentile(means, 100 * np.array([delta, 0.5, 1 - delta]), axis=0)[1, 2])


def aggregate(predictions, references, rng: np.random.RandomState) -> dict:
    items = item_scores(predictions, references)
    return {t: bootstrap_mid(items[t], rng) for t in ROUGE_TYPES}


def score(predictions, references, rng: np.random.RandomState | int = SEED) -> dict:
    """Every official number: rouge1/2/L without the language rule, then rouge1_ja/2_ja/L_ja with it.
    `rng` (a seed or a RandomState, which is advanced) feeds the bootstraps in the official order."""
    rng = np.random.RandomState(rng) if isinstance(rng, (int, np.integer)) else rng
    predictions, references = _pairs(predictions, references)
    out = aggregate(predictions, references, rng)
    ruled = aggregate(language_rule(predictions, references), references, rng)
    return {**out, **{f"{t}_ja": v for t, v in ruled.items()}}


# --------------------------------------------------------------------------- protocols

@dataclass(frozen=True)
class VqaProtocol:
    """How answers are generated; scoring (`score`) is the official one for every protocol."""
    name: str
    prompt: Callable[[str], str]            # question -> prompt text with the image token
    generation: dict = field(default_factory=lambda: dict(GENERATION))
    dtype: str = DTYPE
    batch_size: int = BATCH_SIZE


OFFICIAL = VqaProtocol("official", official_prompt)
