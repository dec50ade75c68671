"""Data references: local data files checked (readable, UTF-8, JSON lines, not empty) before `datasets`
reads them, or hub data sets; every error names the file or reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .hub import naming


def read_bytes(path, label: Optional[str] = None, n: int = -1) -> bytes:
    """The first ``n`` bytes (all: -1) of a local file; errors name it (a folder, missing, unreadable)."""
    p = Path(path)
    label = label or str(p)
    if p.is_dir():
        raise IsADirectoryError(f"{label}: is a folder, expected a file")
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise type(e)(f"{label}: cannot read it ({e.strerror or e})") from None


def read_text(path, label: Optional[str] = None) -> str:
    """The UTF-8 text of a small local file; errors name it (see `read_bytes`; not UTF-8, blank)."""
    label = label or str(path)
    raw = read_bytes(path, label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{label}: line {line} is not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at "
                         f"offset {e.start})") from None
    if not text.strip():
        raise ValueError(f"{label}: the file is empty")
    return text


def check_json_rows(text: str, label: str) -> None:
    """`text` must be one JSON document or JSON lines of objects; an error names the line."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:      # not one document: JSON lines, checked line by line
        pass
    else:
        if doc in ([], {}):
            raise ValueError(f"{label}: has no rows")
        return
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{label}: line {i} is not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{label}: line {i} is not a JSON object")


def nonempty(ds, label: str):
    """``ds`` itself, or an error naming ``label`` if it has no rows."""
    if len(ds) == 0:
        raise ValueError(f"{label}: has no rows")
    return ds


def load_data_file(path, label: Optional[str] = None, kind: Optional[str] = None):
    """A local data file (or list of files) as a `datasets.Dataset` of at least one row, checked first
    (see `read_text`, `check_json_rows`; parquet: footer read); ``kind`` defaults from the suffix
    (.parquet, .csv, else json). Errors name the file."""
    import datasets
    files = [Path(path)] if isinstance(path, (str, Path)) else [Path(f) for f in path]
    label = label or str(files[0])
    kind = kind or {".parquet": "parquet", ".csv": "csv"}.get(files[0].suffix, "json")
    for f in files:
        where = label if len(files) == 1 else f"{label}: {f}"
        if kind == "parquet":
            import pyarrow.parquet as pq
            read_bytes(f, where, 0)
            with naming(f"{where}: not a readable parquet file"):
                rows = pq.read_metadata(f).num_rows
            if rows == 0:
                raise ValueError(f"{where}: has no rows")
        else:
            text = read_text(f, where)
            if kind == "json":
                check_json_rows(text, where)
    with naming(f"{label}: cannot be read as {kind}"):
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    return nonempty(ds, label)


def check_out_file(path, what: str = "--json") -> None:
    """An error now, not after the work, if the output file ``path`` cannot be written where asked."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p}: is a folder, expected a file name")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"{what} {p}: folder {p.parent} does not exist")


def load_hub_dataset(ref: str, split: str, config: Optional[str] = None, label: Optional[str] = None):
    """`datasets.load_dataset(ref, config, split=split)` (``config`` dropped for a data set without
    configs), with at least one row; errors name ``ref``."""
    import datasets
    label = label or ref
    with naming(f"{label}: not a local file, and loading it from the Hugging Face hub failed"):
        try:
            ds = datasets.load_dataset(ref, config, split=split)
        except ValueError as e:       # a data set without configs named `config`
            if config is None or "onfig" not in str(e):
                raise
            ds = datasets.load_dataset(ref, split=split)
    return nonempty(ds, f"{label} (split {split})")


def check_positive(value, what: str = "limit"):
    """``value`` itself (None allowed: no limit), or an error unless it is an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{what} must be >= 1, got {value!r}")
    return value


def seeded_subset(rows: list, limit, seed: int = 0) -> list:
    """``rows`` or, with ``limit`` below their number, a seeded random subset of that size in data order."""
    import numpy as np
    if check_positive(limit) is not None and limit < len(rows):
        keep = sorted(np.random.RandomState(seed).choice(len(rows), limit, replace=False))
        rows = [rows[i] for i in keep]
    return rows
