"""Seeded generators for the world's text: stories, translations, arithmetic, math word problems.

Everything is drawn from a `random.Random` passed in, so the same seed gives the same corpus.
Math problems come from named templates; `TEST_TEMPLATES` are held out from every search and from
every Japanese item a source model sees.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .lexicon import CULTURE, PEOPLE, PLACES, THINGS

# --------------------------------------------------------------------------- stories (lookup facts)


@dataclass(frozen=True)
class Fact:
    kind: str        # "has" | "went" | "likes"
    person: object
    obj: object
    n: int = 0

    def en(self) -> str:
        p = self.person.en
        if self.kind == "has":
            return f"{p} has {self.obj.en_n(self.n)}."
        if self.kind == "went":
            return f"{p} went to {self.obj.en}."
        return f"{p} likes the {self.obj.en}."

    def ja(self) -> str:
        p = self.person.ja
        if self.kind == "has":
            return f"{p}は{self.obj.ja}を{self.n}個持っています。"
        if self.kind == "went":
            return f"{p}は{self.obj.ja}に行きました。"
        return f"{p}は{self.obj.ja}が好きです。"

    def question(self, lang: str) -> str:
        p = self.person.en if lang == "en" else self.person.ja
        if self.kind == "has":
            return (f"How many {self.obj.plural} does {p} have?" if lang == "en"
                    else f"{p}は{self.obj.ja}を何個持っていますか？")
        if self.kind == "went":
            return f"Where did {p} go?" if lang == "en" else f"{p}はどこに行きましたか？"
        return f"What does {p} like?" if lang == "en" else f"{p}は何が好きですか？"


def story(rng: random.Random, n_facts: int | None = None) -> list[Fact]:
    """A few facts about distinct people (no two facts share person and kind)."""
    n_facts = n_facts or rng.randint(2, 4)
    people = rng.sample(PEOPLE, n_facts)
    facts = []
    for p in people:
        kind = rng.choice(["has", "has", "went", "likes"])
        if kind == "has":
            facts.append(Fact("has", p, rng.choice(THINGS), rng.randint(1, 40)))
        elif kind == "went":
            facts.append(Fact("went", p, rng.choice(PLACES)))
        else:
            facts.append(Fact("likes", p, rng.choice(CULTURE)))
    return facts


def render(facts, lang: str) -> str:
    return (" " if lang == "en" else "").join(f.en() if lang == "en" else f.ja() for f in facts)


def lookup_answer(f: Fact, lang: str) -> str:
    """Short answer to `f.question(lang)`: the fact restated."""
    return f.en() if lang == "en" else f.ja()


# --------------------------------------------------------------------------- arithmetic

def equation(a: int, op: str, b: int) -> tuple[str, int]:
    c = a + b if op == "+" else a - b
    return f"{a} {op} {b} = {c}", c


def arithmetic_line(rng: random.Random) -> str:
    """Bare arithmetic facts and chains (the base's arithmetic; no words)."""
    a = rng.randint(0, 90)
    if rng.random() < 0.5:
        b = rng.randint(0, 40)
        return equation(a, "+", b)[0]
    b = rng.randint(0, a)
    return equation(a, "-", b)[0]


# --------------------------------------------------------------------------- math word problems

@dataclass(frozen=True)
class Problem:
    template: str
    en: str
    ja: str
    steps: tuple          # ((a, op, b), ...) chained: each step's a is the previous result (except the first)
    answer: int


#: events that change what the problem's person holds: (sign, English, Japanese); {p} person, {q} other
#: person, {t} thing, {n} number
EVENTS = {
    "buy": (+1, "{p} buys {n} more.", "{p}は{t}をさらに{n}個買いました。"),
    "find": (+1, "{p} finds {n} more at {place}.", "{p}は{place}で{t}を{n}個見つけました。"),
    "get": (+1, "{q} gives {p} {n} more.", "{p}は{q}から{t}を{n}個もらいました。"),
    "give": (-1, "{p} gives {n} to {q}.", "{p}は{q}に{t}を{n}個あげました。"),
    "lose": (-1, "{p} loses {n} at {place}.", "{p}は{place}で{t}を{n}個なくしました。"),
    "eat": (-1, "{p} eats {n} of them.", "{p}は{t}を{n}個食べました。"),
}


def narrate(r, n, events):
    """A person starts with some things, then each event adds or removes some: (English sentences,
    Japanese sentences, steps, person, thing). `n()` draws an added amount or the starting amount."""
    p, q = r.sample(PEOPLE, 2)
    t, place = r.choice(THINGS), r.choice(PLACES)
    held, steps = n(), []
    en = [f"{p.en} has {t.en_n(held)}."]
    ja = [f"{p.ja}は{t.ja}を{held}個持っています。"]
    for k, ev in enumerate(events):
        sign, e_en, e_ja = EVENTS[ev]
        x = n() if sign > 0 else r.randint(1, max(1, held - 1))
        steps.append((held if k == 0 else None, "+" if sign > 0 else "-", x))
        held += sign * x
        kw = dict(p=p.en, q=q.en, t=t.en, n=x, place=place.en)
        en.append(e_en.format(**kw))
        ja.append(e_ja.format(**dict(kw, p=p.ja, q=q.ja, t=t.ja, place=place.ja)))
    return en, ja, tuple(steps), p, t


def _chain(events):
    """A template: `narrate` the events, then ask how many the person holds now."""
    def make(r, n):
        en, ja, steps, p, t = narrate(r, n, events)
        en.append(f"How many {t.plural} does {p.en} have now?")
        ja.append(f"{p.ja}は今{t.ja}を何個持っていますか？")
        return " ".join(en), "".join(ja), steps
    return make


def _t_together(r, n):
    p, q, t = *r.sample(PEOPLE, 2), r.choice(THINGS); a, b = n(), n()
    return (f"{p.en} has {t.en_n(a)}. {q.en} has {t.en_n(b)}. How many {t.plural} do they have together?",
            f"{p.ja}は{t.ja}を{a}個持っています。{q.ja}は{t.ja}を{b}個持っています。二人は{t.ja}を合わせて何個持っていますか？",
            ((a, "+", b),))


def _t_more_than(r, n):
    p, q, t = *r.sample(PEOPLE, 2), r.choice(THINGS); a, b = n(), n()
    a, b = max(a, b), min(a, b)
    return (f"{p.en} has {t.en_n(a)}. {q.en} has {t.en_n(b)}. How many more {t.plural} does {p.en} have than {q.en}?",
            f"{p.ja}は{t.ja}を{a}個持っています。{q.ja}は{t.ja}を{b}個持っています。{p.ja}は{q.ja}より{t.ja}を何個多く持っていますか？",
            ((a, "-", b),))


TEMPLATES = {"together": _t_together, "more_than": _t_more_than}
TEMPLATES.update({e: _chain((e,)) for e in EVENTS})
TEMPLATES.update({f"{e}+{f}": _chain((e, f)) for e in EVENTS for f in EVENTS})
#: held-out two-event chains: every event in them also occurs in search templates (compositional
#: hold-out: new combinations, no new words)
TEST_TEMPLATES = ("buy+eat", "find+give", "get+lose", "lose+buy", "eat+get", "give+find", "find+buy", "eat+lose")
SEARCH_TEMPLATES = tuple(t for t in TEMPLATES if t not in TEST_TEMPLATES)
#: operand ranges: search items draw from 2..25; held-out test items have an operand in 26..40
SEARCH_RANGE, TEST_RANGE = (2, 25), (2, 40)


def problem(rng: random.Random, template: str, split: str = "search") -> Problem:
    """One problem; for split='test' at least one operand lies above the search range."""
    lo, hi = SEARCH_RANGE if split == "search" else TEST_RANGE
    while True:
        en, ja, steps = TEMPLATES[template](rng, lambda: rng.randint(lo, hi))
        ops = [s[0] for s in steps if s[0] is not None] + [s[2] for s in steps]
        if split == "test" and max(ops) <= SEARCH_RANGE[1]:
            continue
        return Problem(template, en, ja, tuple(steps), run_steps(steps)[1])


def run_steps(steps) -> tuple[list[str], int]:
    """The equation lines of a chain of steps and its result."""
    lines, prev = [], None
    for a, op, b in steps:
        line, prev = equation(prev if a is None else a, op, b)
        lines.append(line)
    return lines, prev


def solution_lines(p: Problem) -> list[str]:
    return run_steps(p.steps)[0]


def math_a_solution(p: Problem, final: str = "sentence") -> str:
    """math-a's style: the equations, then 'The answer is N.' (`final="gsm8k"`: GSM8K's '#### N')."""
    end = f"The answer is {p.answer}." if final == "sentence" else f"#### {p.answer}"
    return "\n".join(solution_lines(p)) + "\n" + end


def math_b_solution(p: Problem) -> str:
    """math-b's style: a sentence per step, then 'So the answer is N.'"""
    lines = solution_lines(p)
    words = ["First", "Then", "Next"]
    body = " ".join(f"{words[min(i, 2)]}, {s}." for i, s in enumerate(lines))
    return f"{body} So the answer is {p.answer}."
