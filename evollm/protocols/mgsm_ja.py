"""MGSM-ja, the whole protocol in one file: the official scoring and our improved reading.

OFFICIAL reproduces the public evaluation code of the paper (SakanaAI/evolutionary-model-merge,
`evomerge/eval/ja_mgsm.py` and `metrics.py`, `evomerge/models/causallm.py`, `prompt_templates.py`):

- data: `juletxara/mgsm`, config `ja`, split `test` (250 rows), columns `question`, `answer_number`;
- prompt: `PROMPT_JA` (Japanese Alpaca, chain of thought), nothing else around it;
- generation: greedy (temperature 0, top_p 1, repetition penalty 1.0), at most 1024 new tokens,
  the text cut before the first of `STOPS` (and nothing else cut, not even surrounding spaces);
- answer: the last match of `\\d*\\.?\\d+` read with `float` (so "7.50" -> 7.5, "1,000" -> 0.0,
  "-3" -> 3.0, a digit run past float range -> inf, never an error); no match -> no answer;
- an item is right when `answer_number == answer` (Python's exact int/float comparison);
- `acc`: right; `acc_ja`: right AND fastText lid.176 gives P(ja) > 0.5 to the whole output with its
  newlines removed (not replaced), all 176 labels asked (`langid.lang_prob(.., newlines="remove")`).
  The paper's table reports `acc_ja`.

IMPROVED is ours, the default fitness protocol: the same prompt, generation and rule, except
- the answer reading (`read_improved`): thousands separators ("1,234" -> 1234), negatives ("-12",
  "−12" with U+2212, full-width "－12"), full-width digits and decimal points; a hyphen between two
  numbers ("2024-05-01", "1-5") is never a minus sign; no compatibility normalisation ("①" and
  "3²" are not the numbers 1 and 32); integers are read exactly, huge ones as inf;
- one more stop string, `### 指示` (a model that writes a second instruction is cut there, so the
  answer is read from its own reply, not from the instruction it invented);
- language ID on the output with newlines as spaces: removing them glues the last line to the one
  before ("答えは\\n\\n42" -> "答えは42", P(ja) 0.01).
A generation under OFFICIAL scores under both (`IMPROVED.cut` cuts the extra stop string).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

DATA = {"path": "juletxara/mgsm", "config": "ja", "split": "test"}
PROMPT_JA = ("以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
             "一歩一歩考えましょう。\n\n### 指示:\n{question}\n\n### 応答:")
#: the English Alpaca prompt, for rows whose `lang` column says "en" (the world's mixed set)
PROMPT_EN = ("Below is an instruction that describes a task. Write a response that appropriately completes "
             "the request.\n\n### Instruction:\n{question}\n\n### Response:")
STOPS = ("Instruction:", "Instruction", "Response:", "Response")
GENERATION = {"num_beams": 1, "repetition_penalty": 1.0, "max_new_tokens": 1024}   # greedy
LANG_THRESHOLD = 0.5            # P(ja) must be strictly above it


# --------------------------------------------------------------------------- answer reading

_OFFICIAL = re.compile(r"\d*\.?\d+")


def read_official(text: str):
    """The official reading: a float (inf for digit runs past float range), or None."""
    found = _OFFICIAL.findall(text)
    return float(found[-1].replace(",", "")) if found else None


_MINUS = "-\u2212\uff0d"        # hyphen-minus, minus sign, full-width hyphen-minus
_NUMBER = re.compile(rf"(?:(?<![0-9A-Za-z])[{_MINUS}])?(?<![0-9])[0-9]+(?:,[0-9]{{3}})*(?:\.[0-9]+)?")
_INT_DIGITS = 4000              # below Python's int-from-text limit (4300 digits)


def _ascii_digits(text: str) -> str:
    """Decimal digits of any script as ASCII, full-width '．' / '，' as '.' / ','; nothing else changes
    (unlike NFKC, which also turns '①' into '1' and '3²' into '32')."""
    out = []
    for c in text:
        if c.isdecimal() and not c.isascii():
            out.append(str(unicodedata.decimal(c)))
        else:
            out.append({"\uff0e": ".", "\uff0c": ","}.get(c, c))
    return "".join(out)


def read_improved(text: str):
    """Our reading: the last number as an int (exact) or float, or None. A minus sign counts only where
    no digit or Latin letter stands right before it, so '1-5' reads 5 and '2024-05-01' reads 1."""
    found = _NUMBER.findall(_ascii_digits(text))
    if not found:
        return None
    s = found[-1].replace(",", "")
    sign = -1 if s[0] in _MINUS else 1
    s = s.lstrip(_MINUS)
    if "." in s:
        return sign * float(s)
    return sign * int(s) if len(s) <= _INT_DIGITS else sign * math.inf


def is_right(answer, answer_number) -> bool:
    """The official comparison: exact equality of the read number and `answer_number` (None never)."""
    return answer is not None and answer == answer_number


# --------------------------------------------------------------------------- the protocols

@dataclass(frozen=True)
class MathProtocol:
    name: str
    read: Callable[[str], object]
    stops: tuple
    newlines: str                   # how language ID sees line breaks: "remove" (official) or "space"
    generation: dict = field(default_factory=lambda: dict(GENERATION))
    prompt: str = PROMPT_JA

    def cut(self, text: str) -> str:
        """`text` cut before the first of this protocol's stop strings (a generation under a protocol
        with fewer stop strings scores under this one after the cut)."""
        from ..generate import truncate_at
        return truncate_at(text, self.stops)

    def score(self, output: str, answer_number, lang: str = "ja") -> dict:
        """One output: the number read, whether it is right, whether the output is in `lang`, and both
        together (the item's accuracy)."""
        from ..langid import lang_prob
        text = self.cut(output)
        answer = self.read(text)
        right = is_right(answer, answer_number)
        in_lang = lang_prob(text, lang, newlines=self.newlines) > LANG_THRESHOLD
        return {"answer": answer, "number_correct": right, "in_lang": in_lang, "correct": right and in_lang}


OFFICIAL = MathProtocol("official", read_official, STOPS, "remove")
IMPROVED = MathProtocol("improved", read_improved, STOPS + ("### 指示",), "space")
