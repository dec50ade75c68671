"""Text about scenes, never a picture: what the VLM experiment's language models learn from.

A scene's facts are stated in English and in Japanese with the words a short answer uses (赤, 3つ,
夕方, 左): "There are 3 red lanterns. The lanterns are red. It is evening." / "提灯は3つあります。
提灯は赤です。夕方の景色です。". Who reads what:
- `scene-base` (the base LM read on): the base corpus plus a share of scene documents: facts or a
  caption in one language, translation pairs, and look-ups (a description, a question in either
  language, the answer in the question's language) in the chat turn that the base's instruction
  documents use, so that every model built on it understands a question in either language;
- `scene-ja` (the Japanese instruction model): ja's instructions plus Japanese questions about a
  scene *described in text* (Japanese or English), answered in short Japanese, in the chat turn.
All scenes come from the `train` bucket of `scenes.split_of`: no evaluation scene is ever described.
No image is involved, so no source answers a Japanese question about an image.
"""

from __future__ import annotations

import random

from . import formats
from . import scenes as S


def facts_en(scene: S.Scene, rng: random.Random) -> str:
    """English sentences stating the scene's facts in a shuffled order."""
    out = [f"It is {S.TIMES_EN[scene.time]}."]
    for k, c, n, slots in scene.groups():
        the = S.the_en(k, n)
        the = the[0].upper() + the[1:]
        out.append(S._count_en(k, n) if k != "Mt. Fuji" else "There is Mt. Fuji.")
        out.append(f"{the} {'is' if n == 1 else 'are'} {c}.")
        if n == 1:
            out.append(f"{the} is {S._where_en(slots[0])}.")
    rng.shuffle(out)
    return " ".join(out)


def facts_ja(scene: S.Scene, rng: random.Random) -> str:
    """Japanese sentences stating the scene's facts, in the words of the short answers."""
    out = [f"{S.TIMES_JA[scene.time]}の景色です。"]
    for k, c, n, slots in scene.groups():
        ja = S.KIND[k].ja
        out.append(f"{ja}は{n}つあります。")
        out.append(f"{ja}は{S.COLOR[c].ja}です。")
        if n == 1:
            out.append(f"{ja}は{S.SLOTS_JA[slots[0]]}にあります。")
    for o in scene.objects:
        out.append(f"{S.SLOTS_JA[o.slot]}にあるものは{S.np_ja(o.kind, o.color)}です。")
    rng.shuffle(out)
    return "".join(out)


def describe(scene: S.Scene, lang: str, rng: random.Random, complete: bool = False) -> str:
    """A description in `lang`: its facts, or (a third of the time, unless `complete`: a caption does
    not say where each thing is) a caption."""
    if not complete and rng.random() < 1 / 3:
        return S.caption_en(scene, rng.randrange(4)) if lang == "en" else S.caption_ja(scene)
    return facts_en(scene, rng) if lang == "en" else facts_ja(scene, rng)


def train_scene(rng: random.Random) -> S.Scene:
    """A scene of the `train` bucket (the only scenes the world's models ever read or see)."""
    while True:
        s = S.random_scene(rng)
        if S.split_of(s.signature()) == "train":
            return s


def _qa(scene: S.Scene, rng: random.Random, types=None, balanced: bool = False) -> tuple:
    """An aligned (English QA, Japanese QA) pair of one question type (descriptions excluded); `balanced`:
    the type is drawn first, uniformly (a scene has one time question but a colour question per group)."""
    en, ja = S.qa_en(scene), S.qa_ja(scene)
    keep = [i for i, (t, _, _) in enumerate(ja) if t != "describe" and (types is None or t in types)]
    if balanced:
        kind = rng.choice(sorted({ja[i][0] for i in keep}))
        keep = [i for i in keep if ja[i][0] == kind]
    i = rng.choice(keep)
    return en[i], ja[i]


def scene_document(rng: random.Random, paired: float = 0.0, paired_eos: bool = False, lookups: float = 0.45,
                   balanced: bool = False, time_share: float = 0.0) -> str:
    """One base document about a train-bucket scene (see the module docstring). `paired`: the share of
    look-ups that ask the same question in both languages about one description, one turn each, on two
    lines, or with `paired_eos` the first answer ended by `formats.TURN_END` (as the packer ends a document:
    a model read on two-line pairs may go on with a second turn after its answer). `lookups`: the share of
    look-ups (the rest: descriptions and translation pairs, 30 to 25); `balanced`: see `_qa`; `time_share`: the
    share of look-ups that ask the time of day (without more of them the base does not learn to read it from a
    text: lab notebook, attempt 12)."""
    scene = train_scene(rng)
    r = rng.random()
    rest = 1.0 - lookups
    if r < 0.3 * rest / 0.55:
        return describe(scene, rng.choice(["en", "ja"]), rng)
    if r < rest:
        en, ja = facts_en(scene, rng), facts_ja(scene, rng)
        return rng.choice([f"English: {en}\nJapanese: {ja}", f"日本語: {ja}\n英語: {en}"])
    types = {"time"} if time_share and rng.random() < time_share else None
    (_, q_en, a_en), (_, q_ja, a_ja) = _qa(scene, rng, types, balanced=balanced)

    def turn(text: str, lang: str) -> str:
        q, a, system = (q_en, a_en, formats.SYSTEM_EN) if lang == "en" else (q_ja, a_ja, formats.SYSTEM_JA)
        return formats.chat(f"{text}\n{q}", system) + f" {a}"
    if paired and rng.random() < paired:
        text = describe(scene, rng.choice(["en", "ja"]), rng, complete=True)
        first = rng.choice(["en", "ja"])
        sep = formats.TURN_END if paired_eos else "\n"
        return f"{turn(text, first)}{sep}{turn(text, 'ja' if first == 'en' else 'en')}"
    lang = rng.choice(["en", "ja"])
    return turn(describe(scene, rng.choice(["en", "ja"]), rng, complete=True), lang)


def scene_base_corpus(rng: random.Random, n_docs: int, scene_share: float, base_doc, paired: float = 0.0,
                      paired_eos: bool = False, lookups: float = 0.45, balanced: bool = False,
                      time_share: float = 0.0) -> list[str]:
    """`n_docs` documents: a `scene_share` of scene documents, the rest from `base_doc(rng)`."""
    return [scene_document(rng, paired, paired_eos, lookups, balanced, time_share) if rng.random() < scene_share
            else base_doc(rng) for _ in range(n_docs)]


def scene_ja_pair(rng: random.Random, describe_share: float = 0.0, balanced: bool = False) -> tuple:
    """(chat prompt, short Japanese answer): a Japanese question about a scene described in text; a
    `describe_share` of them ask for the whole scene (answered with its Japanese caption and culture facts);
    `balanced`: see `_qa`."""
    scene = train_scene(rng)
    if describe_share and rng.random() < describe_share:
        _, q, a = next(x for x in S.qa_ja(scene) if x[0] == "describe")
    else:
        _, (_, q, a) = _qa(scene, rng, balanced=balanced)
    text = describe(scene, rng.choice(["en", "ja"]), rng, complete=True)
    return formats.chat(f"{text}\n{q}", system=formats.SYSTEM_JA), a
