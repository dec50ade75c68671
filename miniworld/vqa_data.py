"""The world's Japanese VQA data sets, in the columns of the real benchmarks (parquet + `Image()`).

- JA-VG-VQA-500 columns (`image_id, url, width, height, coco_id, flickr_id, qas, image`; `qas` a list
  of `{a_objects, answer, q_objects, qa_id, question}`; the evaluation uses `qas[0]`), split
  `train` (the fitness split, as on the hub) and `test` (held out).
- JA-VLM-Bench-In-the-Wild columns (`page_url, image_url, image, question, answer`), split `test`.

Scenes come from disjoint buckets of the signature space (`scenes.split_of`), so no two splits (nor
the VLM's training scenes) share a scene; `url` / `page_url` carry the signature
(`world://<set>/<id>#<quoted signature>`) so that `check_disjoint` can prove it on the files.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from urllib.parse import quote, unquote

from . import scenes as S

VG_DIR, WILD_DIR = "ja-vg-vqa-500", "ja-vlm-bench-in-the-wild"
VG_QUESTION_TYPES = ("what", "time", "color", "count", "where", "slot", "fact")


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def vg_features():
    from datasets import Features, Image, List, Value
    qa = {"a_objects": List(Value("null")), "answer": Value("string"), "q_objects": List(Value("null")),
          "qa_id": Value("int64"), "question": Value("string")}
    return Features({"image_id": Value("int64"), "url": Value("string"), "width": Value("int64"),
                     "height": Value("int64"), "coco_id": Value("float64"), "flickr_id": Value("float64"),
                     "qas": List(qa), "image": Image()})


def wild_features():
    from datasets import Features, Image, Value
    return Features({"page_url": Value("string"), "image_url": Value("string"), "image": Image(),
                     "question": Value("string"), "answer": Value("string")})


def vg_rows(scenes: list, name: str, id_base: int, seed: int) -> dict:
    """JA-VG-VQA columns for `scenes`; `qas[0]`'s question type is drawn uniformly per scene."""
    rng = random.Random(f"vg:{name}:{seed}")
    cols = {k: [] for k in vg_features()}
    for i, sc in enumerate(scenes):
        qas = [q for q in S.qa_ja(sc) if q[0] in VG_QUESTION_TYPES]
        first = rng.choice(sorted({t for t, _, _ in qas}))
        rng.shuffle(qas)
        qas.sort(key=lambda q: q[0] != first)            # stable: one of type `first` leads
        image_id = id_base + i
        cols["image_id"].append(image_id)
        cols["url"].append(f"world://{VG_DIR}/{name}/{image_id}#{quote(sc.signature())}")
        cols["width"].append(S.SIZE)
        cols["height"].append(S.SIZE)
        cols["coco_id"].append(None)
        cols["flickr_id"].append(None)
        cols["qas"].append([{"a_objects": [], "answer": a, "q_objects": [], "qa_id": image_id * 100 + j,
                             "question": q} for j, (_, q, a) in enumerate(qas)])
        cols["image"].append({"bytes": _png(S.render(sc)), "path": None})
    return cols


def wild_rows(scenes: list, n_questions: int, seed: int) -> dict:
    """In-the-Wild columns: one question per scene, then second questions on the first scenes."""
    rng = random.Random(f"wild:{seed}")
    cols = {k: [] for k in wild_features()}
    order = list(range(len(scenes))) + list(range(n_questions - len(scenes)))
    asked = {}
    for i in order:
        sc = scenes[i]
        for _ in range(50):                              # a second question differs from the first
            q, a = S.wild_qa_ja(sc, rng)
            if q not in asked.get(i, ()):
                break
        asked.setdefault(i, set()).add(q)
        url = f"world://{WILD_DIR}/{i}#{quote(sc.signature())}"
        cols["page_url"].append(url)
        cols["image_url"].append(url)
        cols["image"].append({"bytes": _png(S.render(sc)), "path": None})
        cols["question"].append(q)
        cols["answer"].append(a)
    return cols


def _write(cols: dict, features, path: Path) -> Path:
    import pyarrow.parquet as pq
    from datasets import Dataset
    path.parent.mkdir(parents=True, exist_ok=True)
    from evollm.fsutil import write_atomic
    table = Dataset.from_dict(cols, features=features).data.table     # schema carries the features
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_atomic(path, buf.getvalue())
    return path


def build_vqa_data(out_dir, seed: int = 0, n_fitness: int = 300, n_test: int = 200,
                   n_wild_images: int = 42, n_wild_questions: int = 50) -> dict:
    """Write the three parquet files under `out_dir`; returns {name: path}."""
    if not n_wild_images <= n_wild_questions <= 2 * n_wild_images:
        raise ValueError("need n_wild_images <= n_wild_questions <= 2 * n_wild_images")
    out = Path(out_dir)
    paths = {
        "vg_train": _write(vg_rows(S.scenes_for("fitness", n_fitness, seed), "train", 1_000_000, seed),
                           vg_features(), out / VG_DIR / "train.parquet"),
        "vg_test": _write(vg_rows(S.scenes_for("test", n_test, seed), "test", 2_000_000, seed),
                          vg_features(), out / VG_DIR / "test.parquet"),
        "wild_test": _write(wild_rows(S.scenes_for("wild", n_wild_images, seed, min_objects=2),
                                      n_wild_questions, seed), wild_features(), out / WILD_DIR / "test.parquet"),
    }
    check_disjoint(*[_signatures_of_file(p) for p in paths.values()])
    return paths


def signature_of_url(url: str) -> str:
    if "#" not in url:
        raise ValueError(f"url {url!r} carries no scene signature")
    return unquote(url.split("#", 1)[1])


def signatures(dataset) -> set:
    """Scene signatures of a loaded world data set (JA-VG-VQA or In-the-Wild columns)."""
    col = "url" if "url" in dataset.column_names else "page_url"
    return {signature_of_url(u) for u in dataset[col]}


def _signatures_of_file(path) -> set:
    import pyarrow.parquet as pq
    table = pq.read_table(path, columns=None)
    col = "url" if "url" in table.column_names else "page_url"
    return {signature_of_url(u) for u in table.column(col).to_pylist()}


def check_disjoint(*signature_sets) -> None:
    """Raise if any two sets share a scene signature, or any scene is in the VLM's training bucket."""
    for i, a in enumerate(signature_sets):
        leaked = [s for s in a if S.split_of(s) == "train"]
        if leaked:
            raise ValueError(f"data set {i} holds {len(leaked)} scenes of the VLM's training bucket, e.g. {leaked[0]}")
        for j, b in enumerate(signature_sets[i + 1:], i + 1):
            common = a & b
            if common:
                raise ValueError(f"data sets {i} and {j} share {len(common)} scenes, e.g. {sorted(common)[0]}")
