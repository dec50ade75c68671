"""The disk sink: a recipe planned (`plan.py`), executed (`execute.py`) tensor by tensor and streamed
into an output folder (`evollm merge --recipe`).

run_merge(recipe, out_dir) opens the models, plans the whole output before reading a tensor (so bad
inputs fail first, naming tensor and models), merges one output tensor at a time on the merge device
and writes it into its pre-computed place in the output shards. A search's in-memory merges
(`memory.py`) go through the same plan and executor, so they equal the export bit for bit.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from ..card import portable_recipe, recipe_card, write_card
from ..checkpoint import TOKENIZER_FILES, AtomicFolder, Checkpoint, ShardedWriter, copy_files
from ..hub import resolve_model
from ..kernels.methods import MergeMethod
from ..recipe import Recipe
from .execute import CheckpointInputs, merge_task
from .plan import (LAYER_RE, SHAPE_KEYS, MergeError, Skeleton, TensorTask, decoder_layers,
                   layer_position, layer_prefix, plan_merge, text_config)

#: the planner's names are still importable from here (they lived here before plan.py)
__all__ = ["LAYER_RE", "SHAPE_KEYS", "MergeError", "Skeleton", "TensorTask", "check_device", "decoder_layers",
           "layer_position", "layer_prefix", "merge_tensor", "open_models", "plan_merge", "run_merge",
           "text_config", "tokenizer_folder"]


def _recipe_dir(recipe: Recipe) -> Optional[Path]:
    return Path(recipe.origin).parent if recipe.origin and not recipe.origin.startswith("<") else None


def open_models(recipe: Recipe, allow_pickle: bool = False) -> Dict[str, Checkpoint]:
    return {r: Checkpoint(resolve_model(r, _recipe_dir(recipe)), name=r, allow_pickle=allow_pickle)
            for r in recipe.model_refs()}


def tokenizer_folder(recipe: Recipe, ckpts: Dict[str, Checkpoint]) -> Path:
    """Where the output's tokenizer files come from: tokenizer_source, else the base model,
    else the first model."""
    ref = recipe.tokenizer_source if recipe.tokenizer_source not in (None, "base") else recipe.base_model
    ref = ref or recipe.model_refs()[0]
    return ckpts[ref].path if ref in ckpts else resolve_model(ref, _recipe_dir(recipe))


def merge_tensor(task: TensorTask, ckpts: Dict[str, Checkpoint], method: MergeMethod, seed: int,
                 device: str, candidate: int = 0) -> torch.Tensor:
    """Read the inputs of one output tensor, merge them on ``device``, return it in its out dtype."""
    return merge_task(task, method, CheckpointInputs(ckpts, device), seed, candidate).to(task.out_dtype)


def run_merge(recipe: Recipe, out_dir, *, device: str = "cpu", seed: int = 0, force: bool = False,
              allow_pickle: bool = False, shard_bytes: int = 5 * 1024**3, progress: bool = True,
              license: str = None) -> dict:
    """Merge ``recipe`` into the folder ``out_dir``, with its model card (card.py; `license` its license);
    returns a summary dict."""
    start = time.perf_counter()
    check_device(device)
    target = AtomicFolder(out_dir, force=force)          # refuses an existing folder up front
    ckpts = open_models(recipe, allow_pickle=allow_pickle)
    tasks, out_cfg = plan_merge(recipe, ckpts)
    tok_path = tokenizer_folder(recipe, ckpts)
    method = recipe.method
    out_dtypes = {t.out_dtype for t in tasks if t.out_dtype.is_floating_point}
    if len(out_dtypes) == 1:
        name = str(next(iter(out_dtypes))).replace("torch.", "")
        for c in (out_cfg, out_cfg.get("text_config")):
            if c is not None:
                c["dtype"] = name
                if "torch_dtype" in c:
                    c["torch_dtype"] = name
    with target as tmp:
        writer = ShardedWriter(tmp, [(t.name, t.out_dtype, t.shape) for t in tasks], shard_bytes)
        try:
            bar = _progress(tasks, progress)
            for task in bar:
                writer.write(task.name, merge_tensor(task, ckpts, method, seed, device))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        (tmp / "config.json").write_text(json.dumps(out_cfg, indent=2, ensure_ascii=False) + "\n")
        copy_files(tok_path, tmp, TOKENIZER_FILES)
        (tmp / "mergekit_config.yml").write_text(portable_recipe(recipe).to_yaml())
        write_card(tmp, recipe_card(recipe, out_dir, license))
    secs = time.perf_counter() - start
    return {"tensors": len(tasks), "bytes": writer.bytes_written, "seconds": secs,
            "models": len(ckpts), "out": str(out_dir), "shards": len(writer.files)}


def check_device(device: str, what: str = "--device") -> None:
    """An error unless ``device`` names a torch device this machine has (cpu, cuda, cuda:N, ...)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {device!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergeError(f"{what} {device} asked for, but torch sees no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MergeError(f"{what} {device}: torch sees only {torch.cuda.device_count()} CUDA device(s)")


def _progress(tasks, enabled: bool):
    if not enabled:
        return tasks
    from tqdm import tqdm
    return tqdm(tasks, desc="merging", unit="tensor", file=sys.stderr, dynamic_ncols=True)
