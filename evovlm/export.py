"""`evovlm merge --recipe`: a plain merge whose sources include one LLaVA-style VLM.

The VLM takes part through its language tower, seen under causal-LM names (`TowerView`), so the
recipe is planned and merged by evollm's engine exactly as a recipe of causal LMs would be. The
output is the VLM, in the format it was read: language-tower tensors merged, every other tensor
(vision tower, projector, image newline) copied bit-identical, config and processor files copied.
Where the causal LMs' vocabulary is smaller than the VLM's (the VLM added tokens such as <image>),
the shared rows are merged and the VLM's extra rows are kept as they are.
"""

from __future__ import annotations

import json
import time

import torch

from evollm.card import portable, portable_recipe, recipe_card, write_card
from evollm.checkpoint import TOKENIZER_FILES, AtomicFolder, Checkpoint, ShardedWriter, copy_files
from evollm.engine.disk import MergeError, check_device, merge_tensor, open_models, plan_merge
from evollm.recipe import Recipe

from .model import VOCAB_TENSORS, TowerView, is_vlm, text_vocab

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")


def find_vlm(recipe: Recipe, ckpts: dict) -> str:
    vlms = [r for r, c in ckpts.items() if is_vlm(c)]
    if len(vlms) != 1:
        found = f"found {vlms}" if vlms else "found none (no config with vision_config and text_config)"
        raise MergeError(f"{recipe.origin}: evovlm merge needs exactly one LLaVA-style VLM among the models; {found}")
    if recipe.slices is not None:
        raise MergeError(f"{recipe.origin}: evovlm merge takes a `models:` recipe (slices are not supported for VLMs)")
    return vlms[0]


def shared_rows(vlm_ref: str, ckpts: dict) -> tuple:
    """(rows every source shares, notes): the causal LMs' vocabulary size, which must be equal among
    them and at most the VLM's."""
    full = text_vocab(ckpts[vlm_ref].config)
    lm_sizes = {r: text_vocab(c.config) for r, c in ckpts.items() if r != vlm_ref}
    if len(set(lm_sizes.values())) > 1:
        raise MergeError(f"the causal LMs differ in vocab_size ({lm_sizes}); they must share a tokenizer")
    rows = next(iter(lm_sizes.values()), full)
    if rows > full:
        raise MergeError(f"the causal LMs have {rows} vocabulary rows, more than the VLM {vlm_ref}'s "
                         f"language tower ({full}); a VLM's vocabulary can only extend its LM's")
    notes = []
    if rows < full:
        notes.append(f"vocabulary: rows 0..{rows - 1} merged; the VLM's {full - rows} extra row(s) "
                     f"({', '.join(VOCAB_TENSORS)}) kept from {vlm_ref}")
    return rows, notes


def tower_views(recipe: Recipe, ckpts: dict):
    """(VLM ref, sources with the VLM replaced by its language tower, its TowerView, notes)."""
    vlm_ref = find_vlm(recipe, ckpts)
    rows, notes = shared_rows(vlm_ref, ckpts)
    view = TowerView(ckpts[vlm_ref], rows)
    return vlm_ref, {r: (view if r == vlm_ref else c) for r, c in ckpts.items()}, view, notes


def merge_vlm(recipe: Recipe, out_dir, *, device: str = "cpu", seed: int = 0, force: bool = False,
              allow_pickle: bool = False, shard_bytes: int = 5 * 1024**3, log=print, license: str = None) -> dict:
    """Merge a recipe with one VLM among its models into `out_dir` (a VLM checkpoint with its model card)."""
    start = time.perf_counter()
    check_device(device)
    target = AtomicFolder(out_dir, force=force)
    ckpts = open_models(recipe, allow_pickle=allow_pickle)
    vlm_ref, views, view, notes = tower_views(recipe, ckpts)
    tasks, _ = plan_merge(recipe, views)          # checks architecture, sizes, parameters; LM names
    for n in notes:
        log(n)
    vlm: Checkpoint = ckpts[vlm_ref]
    by_vlm_name = {view.map[t.name]: t for t in tasks}
    specs = []
    for n in vlm.names():                          # the VLM's own order and names
        t = by_vlm_name.get(n)
        dtype = t.out_dtype if t is not None else vlm.dtype(n)
        specs.append((n, dtype, tuple(vlm.shape(n))))
    method = recipe.method
    with target as tmp:
        writer = ShardedWriter(tmp, specs, shard_bytes)
        try:
            for n, dtype, _ in specs:
                t = by_vlm_name.get(n)
                if t is None:
                    writer.write(n, vlm.get(n))                      # vision tower, projector: as read
                    continue
                out = merge_tensor(t, views, method, seed, device)
                if t.name in VOCAB_TENSORS and view.rows < view.full_rows:
                    out = torch.cat([out, vlm.get(n)[view.rows:].to(out)], dim=0)
                writer.write(n, out.to(dtype))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        cfg = json.loads(json.dumps(vlm.config))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        copy_files(vlm.path, tmp, TOKENIZER_FILES + PROCESSOR_FILES)
        (tmp / "mergekit_config.yml").write_text(portable_recipe(recipe).to_yaml())
        write_card(tmp, recipe_card(recipe, out_dir, license, vlm_note=(
            f"Merged: the language tower of the VLM `{portable(vlm_ref)}` only (its parameters, under causal-LM "
            "names); its vision tower, projector and extra vocabulary rows are copied bit-identical.")))
    return {"tensors": len(specs), "merged": len(tasks), "seconds": time.perf_counter() - start,
            "out": str(out_dir), "vlm": vlm_ref, "notes": notes}
