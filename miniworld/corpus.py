"""The world's training corpora and evaluation data sets, all drawn from one seed.

Who sees what (the rules of docs/design.md, the miniature world):
- base: bilingual stories, translations both ways, cross-lingual look-up QA, culture facts and bare
  arithmetic (`12 + 5 = 17`); a share (`instruct_share`) of generic instruction-formatted look-ups and
  translations into English, so that fine-tunes need not learn the prompt formats; a share
  (`event_share`) of one-event narratives ("Ken has 5 apples. Ken eats 2 of them.") in English, in
  Japanese and as translation pairs, so that the base knows what the events mean in both languages;
  no word problems (never a question about the events, never their result).
- ja: Japanese instructions answered in Japanese (translation, story look-ups, culture facts, and
  copying GIVEN equations followed by `答えはNです。`; "how many" look-ups are answered `答えはNです。` too);
  no arithmetic is ever asked of it.
- math-a / math-b: English word problems (all templates) with equation chains-of-thought in two
  styles; a share of Japanese problem statements from the search templates only, answered in English.
- Japanese math fitness split: search templates and operand range; test split: held-out templates,
  an operand above the search range. No source ever sees a Japanese answer to a word problem.
"""

from __future__ import annotations

import random

from . import formats
from .lexicon import CULTURE, CULTURE_FACTS
from .text import (EVENTS, SEARCH_TEMPLATES, TEMPLATES, TEST_TEMPLATES, arithmetic_line, equation, lookup_answer,
                   math_a_solution, math_b_solution, narrate, problem, render, solution_lines, story)

Pair = tuple  # (prompt, response)


# --------------------------------------------------------------------------- base corpus

def _translation(rng, facts):
    en, ja = render(facts, "en"), render(facts, "ja")
    if rng.random() < 0.5:
        return f"English: {en}\nJapanese: {ja}"
    return f"日本語: {ja}\n英語: {en}"


def _lookup_doc(rng, facts):
    """Story in one language, question and answer in the same or the other language."""
    s_lang, q_lang = rng.choice(["en", "ja"]), rng.choice(["en", "ja"])
    f = rng.choice(facts)
    return f"{render(facts, s_lang)}\nQ: {f.question(q_lang)}\nA: {lookup_answer(f, q_lang)}"


def _culture_doc(rng):
    item = rng.choice(CULTURE)
    en, ja = CULTURE_FACTS[item.en]
    return rng.choice([en, ja, f"{en}\n{ja}", f"{ja}\n{en}"])


def base_document(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return render(story(rng), "en")
    if r < 0.30:
        return render(story(rng), "ja")
    if r < 0.50:
        return _translation(rng, story(rng, rng.randint(1, 3)))
    if r < 0.75:
        return _lookup_doc(rng, story(rng))
    if r < 0.90:
        return "\n".join(arithmetic_line(rng) for _ in range(rng.randint(3, 8)))
    return _culture_doc(rng)


def instruct_document(rng: random.Random) -> str:
    """Generic instruction-formatted text (look-ups answered in the question's language, translation
    into English): lets the base know the prompt formats, so that fine-tunes need not each learn them."""
    facts = story(rng)
    f = rng.choice(facts)
    lang = rng.choice(["en", "ja"])
    q, a = f"{render(facts, lang)}\n{f.question(lang)}", lookup_answer(f, lang)
    r = rng.random()
    if r < 0.2:
        small = story(rng, rng.randint(1, 2))
        return f"{formats.alpaca_en('Translate into English: ' + render(small, 'ja'))} {render(small, 'en')}"
    if r < 0.6:
        return f"{(formats.alpaca_en if lang == 'en' else formats.alpaca_ja)(q)} {a}"
    return f"{formats.chat(q, system=formats.SYSTEM_EN if lang == 'en' else formats.SYSTEM_JA)} {a}"


def event_document(rng: random.Random) -> str:
    """A one-event narrative (someone has some things, then buys, eats, gives ... some), in English,
    in Japanese or as a translation pair: the base knows what the events mean in both languages,
    as real base models know their words. No question, no result: never a word problem."""
    en, ja, *_ = narrate(rng, lambda: rng.randint(1, 40), (rng.choice(list(EVENTS)),))
    en, ja = " ".join(en), "".join(ja)
    return rng.choice([en, ja, f"English: {en}\nJapanese: {ja}", f"日本語: {ja}\n英語: {en}"])


def base_corpus(rng: random.Random, n_docs: int, instruct_share: float = 0.0, event_share: float = 0.0) -> list[str]:
    def doc():
        if instruct_share and rng.random() < instruct_share:
            return instruct_document(rng)
        if event_share and rng.random() < event_share:
            return event_document(rng)
        return base_document(rng)
    return [doc() for _ in range(n_docs)]


# --------------------------------------------------------------------------- ja instruction data

def _ja_prompt(rng, instruction):
    if rng.random() < 0.7:
        return formats.alpaca_ja(instruction)
    return formats.chat(instruction, system=formats.SYSTEM_JA)


def ja_pair(rng: random.Random, count_questions: bool = True) -> Pair:
    """A Japanese instruction and its Japanese answer; without `count_questions` the look-ups never
    ask "how many" (then `答えはNです。` follows copied equations only)."""
    r = rng.random()
    if r < 0.20:
        facts = story(rng, rng.randint(1, 2))
        return _ja_prompt(rng, f"次の英語を日本語に訳してください。\n{render(facts, 'en')}"), render(facts, "ja")
    if r < 0.45:
        while True:
            facts = story(rng)
            asked = [f for f in facts if count_questions or f.kind != "has"]
            if asked:
                break
        f = rng.choice(asked)
        # "how many" is always answered the one Japanese way a number is stated (the advice:
        # no competing restatement habit for counting questions)
        answer = f"答えは{f.n}です。" if f.kind == "has" else lookup_answer(f, "ja")
        return _ja_prompt(rng, f"{render(facts, 'ja')}\n{f.question('ja')}"), answer
    if r < 0.60:
        item = rng.choice(CULTURE)
        q = rng.choice([f"{item.ja}について教えてください。", f"{item.ja}とは何ですか？"])
        return _ja_prompt(rng, q), CULTURE_FACTS[item.en][1]
    instr, answer, _ = copy_instruction(rng)
    return _ja_prompt(rng, instr), answer


def copy_instruction(rng: random.Random, n_lines: int | None = None):
    """Copy GIVEN equations and state the last result in Japanese (no arithmetic asked): returns
    (instruction, answer, result). One or two equations (`n_lines` None: either, at random)."""
    a = rng.randint(2, 60)
    lines = [equation(a, "+", rng.randint(1, 40))]
    if (n_lines == 2) if n_lines else rng.random() < 0.5:
        prev = lines[-1][1]
        lines.append(equation(prev, rng.choice("+-"), rng.randint(1, max(1, min(prev, 40)))))
    quoted = "と".join(f"「{s}」" for s, _ in lines)
    instr = rng.choice([f"{quoted}という計算があります。最後の答えを書いてください。",
                        f"{quoted}を書き写して、答えを日本語で言ってください。"])
    return instr, "\n".join(s for s, _ in lines) + f"\n答えは{lines[-1][1]}です。", lines[-1][1]


# --------------------------------------------------------------------------- math data

def math_pair(rng: random.Random, style: str, ja_share: float, exclude=frozenset(), final: str = "sentence") -> Pair:
    """An English (or, with prob. `ja_share`, Japanese search-template) problem, answered in English
    (math-a's last line: `final` = "sentence" 'The answer is N.' or "gsm8k" '#### N')."""
    solve = (lambda p: math_a_solution(p, final)) if style == "a" else math_b_solution
    if rng.random() < ja_share:
        while True:
            p = problem(rng, rng.choice(SEARCH_TEMPLATES), "search")
            if p.ja not in exclude:
                break
        prompt = formats.alpaca_ja(p.ja) if style == "a" else formats.alpaca_en(p.ja)
        return prompt, solve(p)
    p = problem(rng, rng.choice(list(TEMPLATES)), rng.choice(["search", "test"]))
    return formats.alpaca_en(p.en), solve(p)


# --------------------------------------------------------------------------- evaluation data (MGSM columns)

def mgsm_row(p) -> dict:
    return {"question": p.ja, "answer": None, "answer_number": p.answer,
            "equation_solution": "; ".join(solution_lines(p)), "template": p.template}


def mgsm_splits(rng: random.Random, n_fitness: int = 600, n_test: int = 250) -> dict:
    """Japanese math: fitness (search templates) and held-out test (test templates); no shared item."""
    seen, out = set(), {"fitness": [], "test": []}
    for split, n, temps, rng_split in (("fitness", n_fitness, SEARCH_TEMPLATES, "search"),
                                       ("test", n_test, TEST_TEMPLATES, "test")):
        while len(out[split]) < n:
            p = problem(rng, temps[len(out[split]) % len(temps)], rng_split)
            if p.ja not in seen:
                seen.add(p.ja)
                out[split].append(mgsm_row(p))
    return out


def mixed_splits(rng: random.Random, n_fitness: int = 400, n_test: int = 250, exclude_prompts=frozenset()) -> dict:
    """Fallback target: Japanese instructions (copy two given equations, state the result in Japanese)
    mixed with English word problems (answer in English).

    No single source covers both halves: only ja follows the Japanese instruction (the base never saw
    it; the math models answer in English), only the math models solve the word problems. Rows carry
    a `lang` column (the language the answer must be in); English items use held-out templates in
    test; Japanese items whose prompt is in ja's training data (`exclude_prompts`) are skipped.
    """
    out, seen = {"fitness": [], "test": []}, set()
    for split, n in (("fitness", n_fitness), ("test", n_test)):
        while len(out[split]) < n:
            if len(out[split]) % 2 == 0:
                q, _, ans = copy_instruction(rng, 2)
                lang, tmpl = "ja", "copy"
                if formats.alpaca_ja(q) in exclude_prompts or formats.chat(q, formats.SYSTEM_JA) in exclude_prompts:
                    continue
            else:
                temps = SEARCH_TEMPLATES if split == "fitness" else TEST_TEMPLATES
                p = problem(rng, rng.choice(temps), "search" if split == "fitness" else "test")
                q, ans, lang, tmpl = p.en, p.answer, "en", p.template
            if q not in seen:
                seen.add(q)
                out[split].append({"question": q, "answer": None, "answer_number": ans,
                                   "equation_solution": None, "template": tmpl, "lang": lang})
    return out
