"""Loaders of the Japanese VQA benchmarks: a hub id, or the miniature world's local parquet.

`load_ja_vg_vqa` / `load_in_the_wild` return a `datasets.Dataset` with the real benchmark's columns
either way; `qa_items` flattens either format to {image, question, answer} rows (JA-VG-VQA: `qas[0]`,
as the official evaluation does).
"""

from __future__ import annotations

from pathlib import Path

from evollm.datafiles import load_data_file, load_hub_dataset, nonempty
from evollm.hub import is_hub_id, naming

VG_COLUMNS = ("image", "qas")
WILD_COLUMNS = ("image", "question", "answer")
SPLIT_ALIASES = {"fitness": "train"}     # the world's fitness split is the hub's `train` split


def _load(source: str, split: str, columns: tuple, what: str):
    """(data set, how errors name it) of a hub id, parquet file or folder, JSON-lines file or imagefolder."""
    import datasets
    split = SPLIT_ALIASES.get(split, split)
    p = Path(source).expanduser()
    if p.is_dir() and any((d / f"metadata.{x}").exists() for d in (p, p / split) for x in ("jsonl", "csv")):
        # an imagefolder: image files + metadata.jsonl/csv (file_name column), flat or one folder per split
        folder = p / split if (p / split).is_dir() else p
        where = f"{what}: {folder}"
        with naming(f"{where}: cannot be read as an imagefolder"):
            ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    elif p.is_file() and p.suffix in (".jsonl", ".json"):
        # JSON lines whose `image` column holds image paths (relative to the file)
        where = f"{what}: {p}"
        ds = load_data_file(p, where, "json")
        if "image" in ds.column_names:
            for i, v in enumerate(ds["image"]):
                if not isinstance(v, str):
                    raise ValueError(f"{where}: row {i + 1}: column 'image' must hold an image file path, "
                                     f"got {v!r:.60}")
                if not (p.parent / v).is_file():
                    raise FileNotFoundError(f"{where}: row {i + 1}: image file {(p.parent / v).resolve()} not found")
            ds = ds.map(lambda r: {"image": str((p.parent / r["image"]).resolve())})
            ds = ds.cast_column("image", datasets.Image())
    elif p.is_dir():
        files = sorted(p.glob(f"{split}.parquet")) or sorted(p.glob(f"{split}-*.parquet")) \
            or sorted(p.glob(f"data/{split}-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{what}: no {split}.parquet (or {split}-*.parquet) in {p}")
        where = f"{what}: {files[0]}" if len(files) == 1 else f"{what}: {p} ({split})"
        ds = load_data_file(files, where, "parquet")
    elif p.exists():
        where = f"{what}: {p}"
        ds = load_data_file(p, where, "parquet")
    elif not is_hub_id(source):
        raise FileNotFoundError(f"{what}: {source} is neither a file, a folder nor a hub id")
    else:
        where = f"{what}: {source} (split {split})"
        ds = load_hub_dataset(source, split, label=f"{what}: {source}")
    nonempty(ds, where)
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where} lacks column(s) {missing}; it has {ds.column_names}")
    return ds, where


def _first_qa(qas, where: str) -> tuple:
    """(question, answer) of a JA-VG-VQA `qas` cell (its first entry, as the official evaluation reads)."""
    if not qas or not isinstance(qas[0], dict) or "question" not in qas[0] or "answer" not in qas[0]:
        raise ValueError(f"{where}: column 'qas' needs a first entry with 'question' and 'answer', got {qas!r:.80}")
    return qas[0]["question"], qas[0]["answer"]


def load_ja_vg_vqa(source: str = "SakanaAI/JA-VG-VQA-500", split: str = "test"):
    """JA-VG-VQA-500 (`image`, `qas` = [{question, answer, ...}]); `split` 'train'/'fitness' or 'test'."""
    ds, where = _load(source, split, VG_COLUMNS, "JA-VG-VQA")
    for i, qas in enumerate(ds["qas"]):
        _first_qa(qas, f"{where}: row {i + 1}")
    return ds


def load_in_the_wild(source: str = "SakanaAI/JA-VLM-Bench-In-the-Wild", split: str = "test"):
    """JA-VLM-Bench-In-the-Wild (`image`, `question`, `answer`)."""
    return _load(source, split, WILD_COLUMNS, "JA-VLM-Bench-In-the-Wild")[0]


def qa_items(dataset, where: str = "VQA data set") -> list:
    """[{image, question, answer}] of either benchmark (JA-VG-VQA: the first QA of each image); a row
    without an image, with an image that does not decode or a question that is not text is an error
    naming ``where`` and the row."""
    cols = dataset.column_names
    if "qas" not in cols:
        missing = [c for c in WILD_COLUMNS if c not in cols]
        if missing:
            raise ValueError(f"{where} lacks column(s) {missing} (and has no 'qas'); it has {cols}")
    items, rows = [], iter(dataset)
    for i in range(len(dataset)):
        at = f"{where}: row {i + 1}"
        with naming(f"{at}: cannot read it"):        # images are decoded here
            r = next(rows)
        q, a = _first_qa(r["qas"], at) if "qas" in cols else (r["question"], r["answer"])
        if r.get("image") is None:
            raise ValueError(f"{at}: no image")
        if not (isinstance(q, str) and q.strip()) or not isinstance(a, str):
            raise ValueError(f"{at}: question and answer must be text, got {q!r:.60} and {a!r:.60}")
        items.append({"image": r["image"], "question": q, "answer": a})
    return items
