"""The paper's VQA metric: ROUGE-L F-measure x 100 on MeCab words, with the Japanese-answer rule.

As in the official evaluation (evomerge/eval/metrics.py): `rouge_score`'s RougeScorer with a MeCab
tokenizer (fugashi + unidic-lite; emoji removed, text normalised, whitespace collapsed), scores
aggregated by `scoring.BootstrapAggregator` and the mid F-measure reported. If the reference is
Japanese (fastText P(ja) >= 0.5) and the prediction is not (P(ja) < 0.5), the prediction counts as
empty. Differences: NFKC normalisation stands in for `neologdn`, and a regex over the Unicode emoji
blocks for the `emoji` package (neither is a dependency); the bootstrap is seeded.
"""

from __future__ import annotations

import re
import unicodedata

_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF"      # mahjong .. symbols & pictographs extended-A (emoticons, transport, flags)
    "\U00002600-\U000027BF"       # misc symbols, dingbats
    "\U00002B00-\U00002BFF"       # arrows, stars
    "\U0000FE00-\U0000FE0F"       # variation selectors
    "\U0000200D\U000020E3]+")     # zero-width joiner, keycap


class JapaneseTokenizer:
    """rouge_score tokenizer: drop emoji, NFKC-normalise, collapse spaces, split into MeCab words."""

    def __init__(self):
        self._tagger = None

    @staticmethod
    def normalize(text: str) -> str:
        text = _EMOJI.sub("", text)
        text = unicodedata.normalize("NFKC", text)
        return " ".join(text.split())

    def tokenize(self, text: str) -> list:
        if self._tagger is None:
            from fugashi import Tagger
            self._tagger = Tagger("-Owakati")
        return self._tagger.parse(self.normalize(text)).split()


def apply_language_rule(predictions, references, lang: str = "ja") -> list:
    """Predictions, with '' for each non-`lang` prediction whose reference is in `lang`."""
    from evollm.langid import lang_prob
    return ["" if lang_prob(r, lang) >= 0.5 and lang_prob(p, lang) < 0.5 else p
            for p, r in zip(predictions, references)]


def _check(predictions, references):
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return predictions, references


def rouge_l_ja_items(predictions, references, language_rule: bool = True) -> list:
    """Per-item ROUGE-L F-measure x 100 (after the language rule)."""
    from rouge_score import rouge_scorer
    predictions, references = _check(predictions, references)
    if language_rule:
        predictions = apply_language_rule(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=JapaneseTokenizer())
    return [100.0 * scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]


def rouge_l_ja(predictions, references, seed: int = 0, language_rule: bool = True,
               n_samples: int = 1000) -> float:
    """Bootstrap-aggregated (mid) ROUGE-L F-measure x 100, the number the paper reports."""
    import numpy as np
    from rouge_score import rouge_scorer, scoring
    predictions, references = _check(predictions, references)
    if not predictions:
        raise ValueError("no predictions to score")
    if language_rule:
        predictions = apply_language_rule(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=JapaneseTokenizer())
    agg = scoring.BootstrapAggregator(n_samples=n_samples)
    for p, r in zip(predictions, references):
        agg.add_scores(scorer.score(r, p))
    state = np.random.get_state()         # rouge_score resamples with the global numpy RNG
    try:
        np.random.seed(seed)
        result = agg.aggregate()
    finally:
        np.random.set_state(state)
    return 100.0 * float(result["rougeL"].mid.fmeasure)
