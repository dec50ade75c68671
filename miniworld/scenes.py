"""Procedural scenes of Japanese cultural objects: a seeded description, its picture and its texts.

A `Scene` is a time of day, a ground and 1-3 objects (a kind from `lexicon.CULTURE`, a colour from
`lexicon.COLORS`, a slot: left / middle / right); all objects of one kind share one colour. The
picture is drawn with pillow at twice the size and box-downsampled (anti-aliased). Texts come from
the description only: English captions and QA, and their Japanese counterparts.

`Scene.signature()` is the semantic identity of a scene (same signature = same question material);
`split_of(signature)` hashes it into a named bucket so that the VLM's training scenes, the fitness
split, the test split and the In-the-Wild set can never share a scene, whatever their sizes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .lexicon import COLORS, CULTURE, CULTURE_FACTS

SIZE = 48                               # final picture side: a 3 x 3 grid of 16-pixel patches
_C = 128                                # drawing canvas side (downsampled to SIZE)
SLOTS = ("left", "middle", "right")
SLOTS_JA = ("左", "真ん中", "右")
_SLOT_X = (21, 64, 107)                # slot centres: the middle of each third
TIMES = ("day", "evening", "night")
TIMES_EN = {"day": "daytime", "evening": "evening", "night": "night"}
TIMES_JA = {"day": "昼", "evening": "夕方", "night": "夜"}
GROUNDS = ("grass", "sand", "stone")
GROUNDS_JA = {"grass": "草", "sand": "砂", "stone": "石畳"}

KIND = {w.en: w for w in CULTURE}
COLOR = {w.en: w for w in COLORS}
RGB = {"red": (205, 35, 35), "blue": (45, 75, 205), "white": (245, 245, 240), "green": (40, 150, 60),
       "yellow": (240, 205, 40), "black": (30, 30, 30), "pink": (245, 150, 195), "orange": (245, 135, 25)}
#: colours each kind may have (one entry: the kind's colour is never asked about)
KIND_COLORS = {
    "torii gate": ("red", "black"), "Mt. Fuji": ("blue",), "sushi": ("red", "orange", "pink", "yellow"),
    "kimono": ("red", "blue", "pink", "green", "yellow"), "lantern": ("red", "white", "yellow"),
    "pagoda": ("red", "black"), "cherry tree": ("pink", "white"), "koi": ("orange", "red", "white", "yellow"),
    "daruma": ("red",), "bento": ("black", "red"),
}
MAX_COUNT = {"Mt. Fuji": 1}             # one Mt. Fuji per picture
_JA_ADJ = {"red": "赤い", "blue": "青い", "white": "白い", "black": "黒い", "yellow": "黄色い"}

#: the named buckets of the signature space and their shares (out of 100)
SPLITS = {"train": 60, "fitness": 20, "test": 12, "wild": 8}


@dataclass(frozen=True)
class Obj:
    kind: str       # an English CULTURE name, e.g. "torii gate"
    color: str      # an English COLORS name
    slot: int       # 0 left, 1 middle, 2 right


@dataclass(frozen=True)
class Scene:
    time: str
    ground: str
    objects: tuple      # of Obj, sorted by slot
    seed: int           # drawing jitter only (positions in the slot, sizes, stars)

    def signature(self) -> str:
        objs = ",".join(f"{o.slot}:{o.kind}:{o.color}" for o in self.objects)
        return f"{self.time}|{self.ground}|{objs}"

    def groups(self) -> list:
        """[(kind, colour, count, slots)] in order of first slot."""
        out = {}
        for o in self.objects:
            g = out.setdefault(o.kind, [o.kind, o.color, 0, []])
            g[2] += 1
            g[3].append(o.slot)
        return [tuple(g) for g in out.values()]


def split_of(signature: str) -> str:
    """The bucket (a key of SPLITS) a scene signature belongs to; stable across runs and machines."""
    h = int.from_bytes(hashlib.sha256(signature.encode()).digest()[:8], "big") % 100
    for name, share in SPLITS.items():
        if h < share:
            return name
        h -= share
    raise AssertionError("SPLITS shares must sum to 100")


def random_scene(rng: random.Random, min_objects: int = 1) -> Scene:
    """One scene drawn from `rng` (1-3 objects, 1-3 kinds)."""
    n = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    n = max(n, min_objects)
    slots = sorted(rng.sample(range(3), n))
    while True:
        n_kinds = rng.randint(1, n)
        kinds = rng.sample(sorted(KIND), n_kinds)
        assign = kinds + rng.choices(kinds, k=n - n_kinds)
        rng.shuffle(assign)
        if all(assign.count(k) <= MAX_COUNT.get(k, 3) for k in kinds):
            break
    colors = {k: rng.choice(KIND_COLORS[k]) for k in kinds}
    objs = tuple(Obj(k, colors[k], s) for k, s in zip(assign, slots))
    return Scene(rng.choice(TIMES), rng.choice(GROUNDS), objs, rng.randrange(2**31))


def scenes_for(split: str, n: int, seed: int, min_objects: int = 1, unique: bool = True) -> list:
    """`n` scenes whose signatures fall in bucket `split` (distinct signatures if `unique`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    rng = random.Random(f"{split}:{seed}")
    out, seen = [], set()
    for _ in range(n * 2000):
        s = random_scene(rng, min_objects)
        sig = s.signature()
        if split_of(sig) != split or (unique and sig in seen):
            continue
        seen.add(sig)
        out.append(s)
        if len(out) == n:
            return out
    raise ValueError(f"could only find {len(out)} distinct scenes for split {split!r} (asked for {n})")


# --------------------------------------------------------------------------- drawing

def _shade(c, f):
    return tuple(max(0, min(255, int(v * f))) for v in c)


def _torii(d, x, y, s, col):
    w = 15 * s
    for sx in (-1, 1):
        d.rectangle([x + sx * w - 2.5 * s, y - 36 * s, x + sx * w + 2.5 * s, y], fill=col)
    d.rectangle([x - 20 * s, y - 41 * s, x + 20 * s, y - 36 * s], fill=_shade(col, 0.55))   # kasagi
    d.rectangle([x - 17 * s, y - 30 * s, x + 17 * s, y - 27 * s], fill=col)                 # nuki


def _fuji(d, x, y, s, col):
    d.polygon([(x - 24 * s, y), (x - 5 * s, y - 42 * s), (x + 5 * s, y - 42 * s), (x + 24 * s, y)],
              fill=(95, 115, 170))
    d.polygon([(x - 5 * s, y - 42 * s), (x + 5 * s, y - 42 * s), (x + 11 * s, y - 29 * s),
               (x + 4 * s, y - 32 * s), (x, y - 28 * s), (x - 4 * s, y - 32 * s), (x - 11 * s, y - 29 * s)],
              fill=(250, 250, 250))


def _sushi(d, x, y, s, col):
    d.rounded_rectangle([x - 11 * s, y - 9 * s, x + 11 * s, y], radius=3 * s, fill=(250, 250, 245),
                        outline=(200, 200, 190))
    d.rounded_rectangle([x - 13 * s, y - 15 * s, x + 13 * s, y - 8 * s], radius=3 * s, fill=col)


def _kimono(d, x, y, s, col):
    d.rectangle([x - 17 * s, y - 34 * s, x + 17 * s, y - 23 * s], fill=col)                  # sleeves
    d.polygon([(x - 9 * s, y - 34 * s), (x + 9 * s, y - 34 * s), (x + 11 * s, y), (x - 11 * s, y)], fill=col)
    d.rectangle([x - 10 * s, y - 21 * s, x + 10 * s, y - 16 * s], fill=(240, 220, 120))      # obi
    d.line([(x - 4 * s, y - 34 * s), (x + 2 * s, y - 22 * s)], fill=(250, 250, 250), width=max(1, int(2 * s)))
    d.line([(x + 4 * s, y - 34 * s), (x - 2 * s, y - 22 * s)], fill=(250, 250, 250), width=max(1, int(2 * s)))


def _lantern(d, x, y, s, col):
    top = y - 46 * s
    d.line([(x, top - 8 * s), (x, top)], fill=(40, 40, 40), width=max(1, int(s)))
    d.ellipse([x - 10 * s, top, x + 10 * s, top + 26 * s], fill=col, outline=_shade(col, 0.6))
    d.rectangle([x - 5 * s, top - 2 * s, x + 5 * s, top + 2 * s], fill=(30, 30, 30))
    d.rectangle([x - 5 * s, top + 24 * s, x + 5 * s, top + 28 * s], fill=(30, 30, 30))


def _pagoda(d, x, y, s, col):
    roof = (120, 120, 125) if col == RGB["black"] else (60, 60, 65)     # a black pagoda: grey roofs
    body = col
    for i in range(5):
        w, yy = (20 - 3 * i) * s, y - 9 * s * i
        d.rectangle([x - w * 0.55, yy - 7 * s, x + w * 0.55, yy], fill=body)
        d.polygon([(x - w, yy - 6 * s), (x + w, yy - 6 * s), (x + w * 0.6, yy - 10 * s), (x - w * 0.6, yy - 10 * s)],
                  fill=roof)
    d.line([(x, y - 54 * s), (x, y - 64 * s)], fill=roof, width=max(1, int(2 * s)))


def _cherry(d, x, y, s, col):
    d.rectangle([x - 3 * s, y - 22 * s, x + 3 * s, y], fill=(110, 70, 40))
    for dx, dy, r in ((0, -32, 12), (-9, -26, 9), (9, -26, 9), (-6, -38, 8), (6, -38, 8)):
        d.ellipse([x + (dx - r) * s, y + (dy - r) * s, x + (dx + r) * s, y + (dy + r) * s], fill=col)


def _koi(d, x, y, s, col):
    d.ellipse([x - 19 * s, y - 12 * s, x + 19 * s, y + 4 * s], fill=(70, 130, 190))           # pond
    d.ellipse([x - 11 * s, y - 7 * s, x + 7 * s, y - 1 * s], fill=col)
    d.polygon([(x + 6 * s, y - 4 * s), (x + 13 * s, y - 9 * s), (x + 13 * s, y + 1 * s)], fill=col)
    d.ellipse([x - 8 * s, y - 5.5 * s, x - 6 * s, y - 3.5 * s], fill=(20, 20, 20))


def _daruma(d, x, y, s, col):
    d.ellipse([x - 12 * s, y - 24 * s, x + 12 * s, y], fill=col)
    d.ellipse([x - 7 * s, y - 19 * s, x + 7 * s, y - 9 * s], fill=(250, 235, 215))
    for ex in (-3, 3):
        d.ellipse([x + (ex - 1.3) * s, y - 15.5 * s, x + (ex + 1.3) * s, y - 13 * s], fill=(20, 20, 20))


def _bento(d, x, y, s, col):
    d.rectangle([x - 14 * s, y - 12 * s, x + 14 * s, y], fill=col)
    d.rectangle([x - 12 * s, y - 10 * s, x, y - 2 * s], fill=(250, 250, 245))                   # rice
    d.rectangle([x + 1 * s, y - 10 * s, x + 12 * s, y - 2 * s], fill=(235, 215, 170))
    for dx, c in ((4, (60, 160, 60)), (9, (240, 200, 40))):
        d.ellipse([x + (dx - 2.5) * s, y - 8.5 * s, x + (dx + 2.5) * s, y - 3.5 * s], fill=c)


_DRAW = {"torii gate": _torii, "Mt. Fuji": _fuji, "sushi": _sushi, "kimono": _kimono, "lantern": _lantern,
         "pagoda": _pagoda, "cherry tree": _cherry, "koi": _koi, "daruma": _daruma, "bento": _bento}
_SKY = {"day": (135, 200, 240), "evening": (240, 160, 105), "night": (22, 28, 64)}
_GROUND = {"grass": (95, 160, 75), "sand": (215, 195, 145), "stone": (150, 150, 155)}


def render(scene: Scene, size: int = SIZE) -> Image.Image:
    """The scene's picture (RGB, `size` x `size`); a pure function of the scene."""
    rng = random.Random(scene.seed)
    img = Image.new("RGB", (_C, _C), _SKY[scene.time])
    d = ImageDraw.Draw(img)
    horizon = 84 + rng.randint(-4, 4)
    gc = _GROUND[scene.ground]
    d.rectangle([0, horizon, _C, _C], fill=_shade(gc, 0.55) if scene.time == "night" else gc)
    if scene.time == "night":
        for _ in range(8):
            sx, sy = rng.randint(0, _C), rng.randint(0, horizon - 10)
            d.point([(sx, sy), (sx + 1, sy)], fill=(230, 230, 200))
        mx = rng.choice((14, 114))
        d.ellipse([mx - 7, 8, mx + 7, 22], fill=(245, 240, 200))
    else:
        sx = rng.choice((12, 116))
        sy = 14 if scene.time == "day" else horizon - 14
        d.ellipse([sx - 8, sy - 8, sx + 8, sy + 8], fill=(255, 230, 90) if scene.time == "day" else (250, 110, 60))
    for o in sorted(scene.objects, key=lambda o: o.kind != "Mt. Fuji"):     # the mountain is behind
        x = _SLOT_X[o.slot] + rng.randint(-4, 4)
        y = horizon + (2 if o.kind == "Mt. Fuji" else 14 + rng.randint(-3, 8))
        s = rng.uniform(0.85, 1.05)
        _DRAW[o.kind](d, x, y, s, RGB[o.color])
    return img.resize((size, size), Image.BOX)


# --------------------------------------------------------------------------- English texts

def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def np_en(kind: str, color: str = "", n: int = 1) -> str:
    """'a red lantern', '2 white lanterns', 'Mt. Fuji'."""
    if kind == "Mt. Fuji":
        return kind
    w = KIND[kind]
    noun = w.en_count(n)
    core = f"{color} {noun}" if color else noun
    return _article(core) if n == 1 else f"{n} {core}"


def the_en(kind: str, n: int = 1) -> str:
    """'the lantern' / 'the lanterns' / 'Mt. Fuji'."""
    if kind == "Mt. Fuji":
        return kind
    w = KIND[kind]
    return "the " + w.en_count(n)


def _join_en(items: list) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _where_en(slot: int) -> str:
    return "in the middle" if slot == 1 else f"on the {SLOTS[slot]}"


def caption_en(scene: Scene, variant: int = 0) -> str:
    """An English caption; `variant` picks one of a few phrasings."""
    gs = scene.groups()
    things = _join_en([np_en(k, c, n) for k, c, n, _ in gs])
    when = {"day": "in the daytime", "evening": "in the evening", "night": "at night"}[scene.time]
    on = {"grass": "on the grass", "sand": "on the sand", "stone": "on the stone path"}[scene.ground]
    placed = _join_en([f"{np_en(k, c, n)} {_where_en(sl[0])}" if n == 1 else np_en(k, c, n)
                       for k, c, n, sl in gs])
    forms = [f"{things} {on} {when}.", f"A picture of {things} {when}.", f"{placed}, {when}.",
             f"This image shows {things} {on}."]
    text = forms[variant % len(forms)]
    return text[0].upper() + text[1:]


def _count_en(kind, n):
    w = KIND[kind]
    return f"There {'is' if n == 1 else 'are'} {n} {w.en_count(n)}."


def qa_en(scene: Scene, short: bool = False) -> list:
    """English (type, question, answer) triples covering the scene; `short`: the answers a VQA data set
    gives (`red`, `3`, `evening`, `left`, `a red lantern`; facts and descriptions stay sentences)."""
    gs = scene.groups()
    out = []
    cap = lambda x: x[0].upper() + x[1:]
    if len(scene.objects) == 1:
        k, c, _, _ = gs[0]
        out.append(("what", "What is this?", np_en(k, c) if short else f"This is {np_en(k, c)}."))
    items = _join_en([np_en(k, c, n) for k, c, n, _ in gs])
    out.append(("what", "What is in the picture?",
                items if short else f"There {'is' if gs[0][2] == 1 else 'are'} {items}."))
    t = TIMES_EN[scene.time]
    out.append(("time", "What time of day is it?", t if short else f"It is {t}."))
    for k, c, n, slots in gs:
        if len(KIND_COLORS[k]) > 1:
            verb = "is" if n == 1 else "are"
            out.append(("color", f"What color {verb} {the_en(k, n)}?",
                        c if short else f"{cap(the_en(k, n))} {verb} {c}."))
        if k != "Mt. Fuji":
            plural = KIND[k].plural
            out.append(("count", f"How many {plural} are there?", str(n) if short else _count_en(k, n)))
        if n == 1:
            the = the_en(k)
            out.append(("where", f"Where is {the}?", SLOTS[slots[0]] if short else f"{cap(the)} is {_where_en(slots[0])}."))
        out.append(("fact", f"Tell me about {the_en(k)}.", CULTURE_FACTS[k][0]))
    for slot in range(3):
        objs = [o for o in scene.objects if o.slot == slot]
        if objs:
            o = objs[0]
            out.append(("slot", f"What is {_where_en(slot)}?",
                        np_en(o.kind, o.color) if short else f"{cap(np_en(o.kind, o.color))} is {_where_en(slot)}."))
    facts = " ".join(CULTURE_FACTS[k][0] for k, _, _, _ in gs)
    out.append(("describe", "Describe this picture in detail.", f"{caption_en(scene, 2)} {facts}"))
    return out


# --------------------------------------------------------------------------- Japanese texts

def adj_ja(color: str) -> str:
    """赤い / 緑の ..."""
    return _JA_ADJ.get(color, COLOR[color].ja + "の")


def np_ja(kind: str, color: str = "", n: int = 1) -> str:
    """'赤い提灯', '白い提灯2つ', '富士山'."""
    core = KIND[kind].ja if kind == "Mt. Fuji" or not color else adj_ja(color) + KIND[kind].ja
    return core if n == 1 else f"{core}{n}つ"


def caption_ja(scene: Scene) -> str:
    things = "と".join(np_ja(k, c, n) for k, c, n, _ in scene.groups())
    return f"{things}が写っている{TIMES_JA[scene.time]}の景色です。"


def qa_ja(scene: Scene) -> list:
    """Japanese (type, question, answer) triples: the counterparts of `qa_en`. Answers are short, as in
    JA-VG-VQA (a noun phrase, a colour, a count, a place; culture facts and descriptions are sentences),
    so that ROUGE-L rewards content rather than shared function words."""
    gs = scene.groups()
    out = []
    if len(scene.objects) == 1:
        k, c, _, _ = gs[0]
        out.append(("what", "これは何ですか？", np_ja(k, c)))
    out.append(("what", "何が写っていますか？", "と".join(np_ja(k, c, n) for k, c, n, _ in gs)))
    out.append(("time", "いつの景色ですか？", TIMES_JA[scene.time]))
    for k, c, n, slots in gs:
        ja = KIND[k].ja
        if len(KIND_COLORS[k]) > 1:
            out.append(("color", f"{ja}は何色ですか？", COLOR[c].ja))
        if k != "Mt. Fuji":
            out.append(("count", f"{ja}はいくつありますか？", f"{n}つ"))
        if n == 1:
            out.append(("where", f"{ja}はどこにありますか？", SLOTS_JA[slots[0]]))
        out.append(("fact", f"{ja}について教えてください。", CULTURE_FACTS[k][1]))
    for slot in range(3):
        objs = [o for o in scene.objects if o.slot == slot]
        if objs:
            o = objs[0]
            out.append(("slot", f"{SLOTS_JA[slot]}にあるものは何ですか？", np_ja(o.kind, o.color)))
    facts = "".join(CULTURE_FACTS[k][1] for k, _, _, _ in gs)
    out.append(("describe", "この写真について詳しく説明してください。", f"{caption_ja(scene)}{facts}"))
    return out


#: question endings of `qa_ja`'s types (the rest are "what" and "describe" questions)
_JA_TYPE_ENDINGS = (("time", "いつの景色ですか？"), ("color", "は何色ですか？"), ("count", "はいくつありますか？"),
                    ("where", "はどこにありますか？"), ("fact", "について教えてください。"), ("slot", "にあるものは何ですか？"),
                    ("describe", "詳しく説明してください。"))


def question_type_ja(question: str) -> str:
    """The `qa_ja` type of one of its questions (for per-type scores of a data set's rows)."""
    return next((t for t, end in _JA_TYPE_ENDINGS if question.endswith(end)), "what")


def wild_qa_ja(scene: Scene, rng: random.Random) -> tuple:
    """One richer Japanese (question, answer) in the In-the-Wild style (identify + explain)."""
    gs = scene.groups()
    kind, color, n, slots = rng.choice(gs)
    ja = KIND[kind].ja
    facts = "".join(CULTURE_FACTS[k][1] for k, _, _, _ in gs)
    names = "と".join(KIND[k].ja for k, _, _, _ in gs)
    forms = [
        ("この写真について詳しく説明してください。", f"{caption_ja(scene)}{facts}"),
        ("この写真に写っている日本の文化的なものは何ですか？説明してください。", f"{names}です。{facts}"),
        (f"この{ja}は何ですか？説明してください。", f"{np_ja(kind, color)}です。{CULTURE_FACTS[kind][1]}"),
        ("これはどんな場面ですか？", f"{TIMES_JA[scene.time]}の景色で、{'と'.join(np_ja(k, c, m) for k, c, m, _ in gs)}"
                              f"があります。"),
    ]
    if n == 1:
        forms.append((f"{SLOTS_JA[slots[0]]}にあるものは何ですか？それについて教えてください。",
                      f"{SLOTS_JA[slots[0]]}にあるのは{np_ja(kind, color)}です。{CULTURE_FACTS[kind][1]}"))
    return rng.choice(forms)
