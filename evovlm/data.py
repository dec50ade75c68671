"""Loaders of the Japanese VQA benchmarks: a hub id, or the miniature world's local parquet.

`load_ja_vg_vqa` / `load_in_the_wild` return a `datasets.Dataset` with the real benchmark's columns
either way; `qa_items` flattens either format to {image, question, answer} rows (JA-VG-VQA: `qas[0]`,
as the official evaluation does).
"""

from __future__ import annotations

from pathlib import Path

VG_COLUMNS = ("image", "qas")
WILD_COLUMNS = ("image", "question", "answer")
SPLIT_ALIASES = {"fitness": "train"}     # the world's fitness split is the hub's `train` split


def _load(source: str, split: str, columns: tuple, what: str):
    import datasets
    split = SPLIT_ALIASES.get(split, split)
    p = Path(source).expanduser()
    if p.is_dir() and any((d / f"metadata.{x}").exists() for d in (p, p / split) for x in ("jsonl", "csv")):
        # an imagefolder: image files + metadata.jsonl/csv (file_name column), flat or one folder per split
        folder = p / split if (p / split).is_dir() else p
        ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
        where = str(folder)
    elif p.is_file() and p.suffix in (".jsonl", ".json"):
        # JSON lines whose `image` column holds image paths (relative to the file)
        ds = datasets.load_dataset("json", data_files=str(p), split="train")
        if "image" in ds.column_names:
            bad = [v for v in ds["image"] if not isinstance(v, str)]
            if bad:
                raise ValueError(f"{what}: {p}: column 'image' must hold image file paths in a JSON file")
            ds = ds.map(lambda r: {"image": str((p.parent / r["image"]).resolve())})
            missing = [v for v in ds["image"] if not Path(v).is_file()]
            if missing:
                raise FileNotFoundError(f"{what}: {p}: image file {missing[0]} not found")
            ds = ds.cast_column("image", datasets.Image())
        where = str(p)
    elif p.is_dir():
        files = sorted(p.glob(f"{split}.parquet")) or sorted(p.glob(f"{split}-*.parquet")) \
            or sorted(p.glob(f"data/{split}-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{what}: no {split}.parquet (or {split}-*.parquet) in {p}")
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        where = str(files[0]) if len(files) == 1 else f"{p} ({split})"
    elif p.is_file():
        ds = datasets.load_dataset("parquet", data_files=str(p), split="train")
        where = str(p)
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"{what}: {source} is neither a file, a folder nor a hub id")
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as e:  # offline, unknown repo or split, ...
            raise FileNotFoundError(f"{what}: {source} is not a local file or folder, and loading it from the "
                                    f"hub failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        where = f"{source} (split {split})"
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{what}: {where} lacks column(s) {missing}; it has {ds.column_names}")
    return ds


def load_ja_vg_vqa(source: str = "SakanaAI/JA-VG-VQA-500", split: str = "test"):
    """JA-VG-VQA-500 (`image`, `qas` = [{question, answer, ...}]); `split` 'train'/'fitness' or 'test'."""
    ds = _load(source, split, VG_COLUMNS, "JA-VG-VQA")
    for i, qas in enumerate(ds["qas"]):
        if not qas or "question" not in qas[0] or "answer" not in qas[0]:
            raise ValueError(f"JA-VG-VQA: {source} row {i}: column 'qas' needs a first entry with "
                             f"'question' and 'answer'")
    return ds


def load_in_the_wild(source: str = "SakanaAI/JA-VLM-Bench-In-the-Wild", split: str = "test"):
    """JA-VLM-Bench-In-the-Wild (`image`, `question`, `answer`)."""
    return _load(source, split, WILD_COLUMNS, "JA-VLM-Bench-In-the-Wild")


def qa_items(dataset) -> list:
    """[{image, question, answer}] of either benchmark (JA-VG-VQA: the first QA of each image)."""
    if "qas" in dataset.column_names:
        return [{"image": r["image"], "question": r["qas"][0]["question"], "answer": r["qas"][0]["answer"]}
                for r in dataset]
    missing = [c for c in WILD_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(f"VQA data set lacks column(s) {missing} (and has no 'qas'); it has {dataset.column_names}")
    return [{"image": r["image"], "question": r["question"], "answer": r["answer"]} for r in dataset]
