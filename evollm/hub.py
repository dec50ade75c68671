"""Model references: a local folder, or a Hugging Face hub id fetched (safetensors only); errors that
name them (`naming` re-raises whatever a library raises as one line naming the reference)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from .checkpoint import TOKENIZER_FILES, CheckpointError

HUB_PATTERNS = ["*.json", "*.safetensors", *TOKENIZER_FILES]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@contextmanager
def naming(what: str, error=ValueError):
    """Re-raise a library error from the block as one line: `what (Type: message of the root cause)`."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:      # datasets wraps the useful error
            cause = cause.__cause__
        text = " ".join(str(cause).split())
        text = text[:300] + "..." * (len(text) > 300)
        raise error(f"{what} ({type(cause).__name__}{': ' + text if text else ''})") from None


def is_hub_id(ref: str, base_dir: Optional[Path] = None) -> bool:
    """Whether ``ref`` reads as a hub id 'org/name[@revision]' rather than a path: not one that starts
    with . / ~, and no local folder named like its org (then it is a mistyped local path)."""
    repo = ref.partition("@")[0]
    if not _HUB_ID.fullmatch(repo):
        return False
    org = Path(repo.split("/")[0])
    return not (org.is_dir() or (base_dir is not None and (base_dir / org).is_dir()))


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
    if not is_hub_id(ref, base_dir):
        dirs = [] if p.is_absolute() else [str(Path.cwd())] + ([str(base_dir)] if base_dir is not None else [])
        raise CheckpointError(f"model {ref}: no such folder" + (f" (in {' or '.join(dirs)})" if dirs else ""))
    repo, _, revision = ref.partition("@")
    with naming(f"model {ref}: not a local folder, and fetching it from the Hugging Face hub failed",
                CheckpointError):
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_PATTERNS,
                                      ignore_patterns=["consolidated*"]))   # duplicate weights (Mistral repos)


def load_tokenizer(ref: str, base_dir: Optional[Path] = None):
    """The tokenizer of a model folder or hub id (`AutoTokenizer`), or one error line naming ``ref``."""
    from transformers import AutoTokenizer
    path = resolve_model(ref, base_dir)
    known = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if not any((path / f).is_file() for f in known):
        raise CheckpointError(f"tokenizer {ref}: no tokenizer files ({', '.join(known)}) in {path}")
    with naming(f"tokenizer {ref}: transformers cannot load it from {path}", CheckpointError):
        return AutoTokenizer.from_pretrained(path)


def batch_tokenizer(ref: str):
    """`load_tokenizer` set up for batched generation: left padding, a pad token (the eos if none)."""
    tok = load_tokenizer(ref)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.pad_token is None:
        raise CheckpointError(f"tokenizer {ref}: has neither a pad nor an eos token (batched generation needs one)")
    return tok


def load_causal_lm(ref: str, dtype, device: str = "cpu"):
    """A causal LM from a folder or hub id, checked first (config.json, weight headers, not a VLM:
    `checkpoint.check_model_folder`), in eval mode on `device`; errors name `ref`."""
    from transformers import AutoModelForCausalLM

    from .checkpoint import check_model_folder
    path = resolve_model(ref)
    check_model_folder(path, ref)
    with naming(f"model {ref}: transformers cannot load it from {path}"):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
