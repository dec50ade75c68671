"""The world's stand-in for general ability (the paper's JP-LMEH column): `world_jcqa`, Japanese reading
comprehension as JCommonsenseQA-style multiple choice, scored by lm-eval (`evollm eval --suite world-general`).

Each item is a short Japanese story of the world (the `ja` source's look-ups: who has how many of what,
who went where, who likes what), one question about it, and five answers in the form the world's `ja`
model answers them (the fact restated, or `答えはNです。`), one right. Merges that gain math but lose
Japanese reading show it here. Written by this module from its seed (not by the world's build stages):

    python -m miniworld.general_ability --out assets/data/jcqa-world
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from evollm.fsutil import write_atomic

from .lexicon import CULTURE, PLACES
from .text import Fact, render, story

SEED = 20
SPLITS = {"train": 30, "validation": 200}       # few-shot examples; scored items
#: the suite `evollm eval --suite world-general` runs: lm-eval task -> few-shot count (JCommonsenseQA's 3)
SUITE = {"tasks": {"world_jcqa": 0}, "include_path": str(Path(__file__).with_name("lmeval_tasks")),
         "note": "the miniature world's stand-in for JP-LMEH: Japanese reading comprehension, 5-way multiple choice"}


def answer(f: Fact) -> str:
    return f"答えは{f.n}です。" if f.kind == "has" else f.ja()


def item(rng: random.Random) -> dict:
    facts = story(rng, rng.randint(2, 4))
    f = rng.choice(facts)
    # wrong answers: what the story says of the others first (read the wrong line, you pick it), then random
    if f.kind == "has":
        near = list(dict.fromkeys(x.n for x in facts if x.kind == "has" and x.n != f.n))
        wrong = near + rng.sample([n for n in range(1, 41) if n != f.n and n not in near], 4 - len(near))
        others = [Fact("has", f.person, f.obj, n) for n in wrong[:4]]
    else:
        near = list(dict.fromkeys(x.obj for x in facts if x.kind == f.kind and x.obj != f.obj))
        pool = [w for w in (PLACES if f.kind == "went" else CULTURE) if w != f.obj and w not in near]
        others = [Fact(f.kind, f.person, w) for w in (near + rng.sample(pool, 4 - len(near)))[:4]]
    choices = [answer(x) for x in [f] + others]
    rng.shuffle(choices)
    return {"question": f"{render(facts, 'ja')}\n{f.question('ja')}", "choices": choices,
            "label": choices.index(answer(f)), "kind": f.kind}


def splits(seed: int = SEED) -> dict:
    rng = random.Random(f"{seed}-general-ability")
    return {name: [item(rng) for _ in range(n)] for name, n in SPLITS.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for train.jsonl and validation.jsonl")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits(args.seed).items():
        write_atomic(out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {', '.join(f'{n}: {len(r)}' for n, r in splits(args.seed).items())} items to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
