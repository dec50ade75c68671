"""Model references: a local folder, or a Hugging Face hub id fetched (safetensors only)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .checkpoint import TOKENIZER_FILES, CheckpointError

HUB_PATTERNS = ["*.json", "*.safetensors", *TOKENIZER_FILES]


def resolve_model(ref: str, base_dir: Optional[Path] = None) -> Path:
    """Path of a model folder: ``ref`` as a path (relative to the working directory, else to
    ``base_dir``, the recipe's folder), or else a hub id ('org/name[@revision]') downloaded
    into the Hugging Face cache (only safetensors weights, json and tokenizer files)."""
    p = Path(ref).expanduser()
    if p.is_dir():
        return p
    if base_dir is not None and (base_dir / p).is_dir():
        return base_dir / p
    if p.exists():
        raise CheckpointError(f"model {ref}: {p} is not a folder")
    looks_local = ref.startswith((".", "/", "~")) or ref.count("/") != 1
    if looks_local:
        raise CheckpointError(f"model {ref}: no such folder")
    repo, _, revision = ref.partition("@")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_PATTERNS,
                                      ignore_patterns=["consolidated*"]))   # duplicate weights (Mistral repos)
    except Exception as e:  # offline, unknown repo, gated, ...
        raise CheckpointError(f"model {ref}: not a local folder, and fetching it from the Hugging "
                              f"Face hub failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
