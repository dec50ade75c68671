"""Plan and run a parameter-space merge from a recipe: one output tensor at a time.

plan_merge(recipe, checkpoints) checks the sources against each other and returns the list of
output tensors, each with its inputs and resolved parameters, before any tensor is read;
run_merge(...) executes that plan and streams the result into an output folder.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..checkpoint import (TOKENIZER_FILES, AtomicFolder, Checkpoint, ShardedWriter,
                         copy_files, dtype_from_name, vlm_architecture)
from ..hub import resolve_model
from ..kernels import tensor_generator
from ..kernels.methods import MergeMethod
from ..recipe import Recipe, Source, resolve

LAYER_RE = re.compile(r"^(?P<prefix>(?:.*\.)?layers)\.(?P<idx>\d+)\.(?P<rest>.+)$")
#: config keys that must agree between the sources of a parameter-space merge
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size")


class MergeError(ValueError):
    """The sources cannot be merged as the recipe asks; the message names tensor and models."""


@dataclass
class TensorTask:
    name: str                          # output tensor name
    inputs: List[Tuple[str, str]]      # (model reference, tensor name in that model)
    base: Optional[int]                # index into inputs of the base model
    params: dict                       # resolved global parameters
    per_input: List[dict]              # resolved per-model parameters, aligned with inputs
    shape: Tuple[int, ...]
    work_dtype: torch.dtype
    out_dtype: torch.dtype


def text_config(cfg: dict) -> dict:
    return cfg.get("text_config") or cfg


def layer_prefix(ckpt: Checkpoint) -> Tuple[Optional[str], int]:
    """(prefix of the decoder layers, number of layers) of a checkpoint, e.g. ('model.layers', 32)."""
    return decoder_layers(ckpt.names(), text_config(ckpt.config).get("num_hidden_layers"))


def layer_position(name: str, prefix: Optional[str], n_layers: int) -> float:
    """Where a tensor sits along the decoder layers for gradient values: layer i of L at i/(L-1);
    tensors outside the layers (embeddings, final norm, head) at 0."""
    m = LAYER_RE.match(name)
    if not (m and m["prefix"] == prefix):
        return 0.0
    return int(m["idx"]) / (n_layers - 1) if n_layers > 1 else 1.0


def decoder_layers(names, want: Optional[int] = None) -> Tuple[Optional[str], int]:
    """(prefix, count) of the decoder layers among tensor `names`.

    Among several '...layers.N.' families (a VLM's vision tower has one too) the one whose
    count is `want` (num_hidden_layers) wins, else the largest."""
    counts: Dict[str, set] = {}
    for n in names:
        m = LAYER_RE.match(n)
        if m:
            counts.setdefault(m["prefix"], set()).add(int(m["idx"]))
    if not counts:
        return None, 0
    for prefix, idx in counts.items():
        if len(idx) == want:
            return prefix, want
    prefix = max(counts, key=lambda p: len(counts[p]))
    return prefix, len(counts[prefix])


def _check_configs(ckpts: Dict[str, Checkpoint], same_depth: bool) -> None:
    refs = list(ckpts)
    for r in refs:
        vlm = vlm_architecture(ckpts[r].config)
        if vlm:
            raise MergeError(f"model {r} is a vision-language model ({vlm}); merge a recipe that names a VLM "
                             "with `evovlm merge --recipe`")
    first = ckpts[refs[0]].config
    for r in refs[1:]:
        other = ckpts[r].config
        if first.get("model_type") != other.get("model_type"):
            raise MergeError(f"models {refs[0]} and {r} have different architectures (model_type "
                             f"{first.get('model_type')!r} vs {other.get('model_type')!r}); a "
                             "parameter-space merge needs models fine-tuned from one base")
        a, b = text_config(first), text_config(other)
        keys = SHAPE_KEYS + (("num_hidden_layers",) if same_depth else ())
        for key in keys:
            if key in a and key in b and a[key] != b[key]:
                hint = (" The vocabularies differ: merge only models that share a tokenizer, or first "
                        "resize the embeddings of one (model.resize_token_embeddings) so both have "
                        "the same rows, if its tokenizer extends the other's." if key == "vocab_size" else "")
                raise MergeError(f"models {refs[0]} and {r} differ in {key} ({a[key]} vs {b[key]}).{hint}")


def _shape_error(name: str, ra: str, sa, rb: str, sb) -> MergeError:
    msg = f"tensor {name}: shape {tuple(sa)} in model {ra} but {tuple(sb)} in model {rb}"
    if any(k in name for k in ("embed", "lm_head", "wte", "output.weight")):
        msg += (". The vocabulary sizes differ: merge only models that share a tokenizer, or first "
                "resize the embeddings of one (model.resize_token_embeddings) to the other's size "
                "if its tokenizer extends the other's")
    return MergeError(msg)


def _sort_key(prefix: Optional[str]):
    def key(name: str):
        m = LAYER_RE.match(name)
        if m and m["prefix"] == prefix:
            return (1, int(m["idx"]), m["rest"])
        return (0 if _is_pre(name) else 2, 0, name)
    return key


def _is_pre(name: str) -> bool:
    """Non-layer tensors that come before the layers (embeddings); the rest come after."""
    return any(k in name for k in ("embed", "wte", "wpe"))


def plan_merge(recipe: Recipe, ckpts: Dict[str, Checkpoint]) -> Tuple[List[TensorTask], dict]:
    """The list of output tensors and the output config.json, or an error naming the culprit."""
    method = recipe.method
    _check_configs(ckpts, same_depth=recipe.models is not None)
    donor_ref = recipe.base_model or recipe.model_refs()[0]
    donor = ckpts[donor_ref]
    prefix, n_layers = layer_prefix(donor)
    out_cfg = copy.deepcopy(donor.config)
    tasks: List[TensorTask] = []

    def add(out_name, sources: List[Source], in_names: List[str], base_ref, scopes, t):
        refs = [s.model for s in sources]
        base = refs.index(base_ref) if (method.base == "required" and base_ref in refs) else None
        if method.base == "required" and base is None:
            raise MergeError(f"{recipe.origin}: {method.name} needs its base model {base_ref} among "
                             f"the inputs of tensor {out_name}")
        if method.max_inputs is not None and len(refs) > method.max_inputs:
            raise MergeError(f"{recipe.origin}: {method.name} takes at most {method.max_inputs} "
                             f"input(s) per tensor, got {len(refs)} for {out_name}")
        if len(refs) < method.min_inputs:
            raise MergeError(f"{recipe.origin}: {method.name} needs at least {method.min_inputs} "
                             f"models (base included), got {len(refs)} for {out_name}")
        shapes = []
        for r, n in zip(refs, in_names):
            if n not in ckpts[r]:
                raise MergeError(f"tensor {n} is missing from model {r} (present in {donor_ref}); "
                                 "the models do not have the same architecture")
            shapes.append(ckpts[r].shape(n))
        ref = base if base is not None else 0
        for r, n, s in zip(refs, in_names, shapes):
            if s != shapes[ref]:
                raise _shape_error(n, refs[ref], shapes[ref], r, s)
        g = {p.name: resolve(method, p.name, scopes(None), out_name, t, f"tensor {out_name}")
             for p in method.params if p.scope == "global"}
        per = []
        for i, (src, n) in enumerate(zip(sources, in_names)):
            want = ("input",) if i == base else ("input", "non_base")
            per.append({p.name: resolve(method, p.name, scopes(src), n, t, f"model {src.model}, tensor {n}")
                        for p in method.params if p.scope in want})
        stored = ckpts[refs[ref]].dtype(in_names[ref])
        work = dtype_from_name(recipe.dtype) if recipe.dtype else stored
        out = dtype_from_name(recipe.out_dtype) if recipe.out_dtype else work
        if not stored.is_floating_point:
            work = out = stored
        tasks.append(TensorTask(out_name, list(zip(refs, in_names)), base, g, per, shapes[ref], work, out))

    if recipe.models is not None:
        sources = list(recipe.models)
        if recipe.base_model and recipe.base_model not in [s.model for s in sources]:
            sources.append(Source(model=recipe.base_model))
        for s in sources:
            missing = sorted(set(ckpts[s.model].names()) - set(donor.names()))
            if missing:
                raise MergeError(f"model {s.model} has tensor {missing[0]} that {donor_ref} lacks; "
                                 "the models do not have the same architecture")

        def scopes(src):
            return [recipe.parameters] if src is None else [src.parameters, recipe.parameters]

        for name in sorted(donor.names(), key=_sort_key(prefix)):
            t = layer_position(name, prefix, n_layers)
            add(name, sources, [name] * len(sources), recipe.base_model, scopes, t)
        return tasks, out_cfg

    # slices: pre tensors from the first slice's sources, layers slice by slice, post tensors
    # from the last slice's sources (as mergekit does)
    slices = recipe.slices
    prefixes = {}
    for sl in slices:
        for s in sl.sources:
            p, n = layer_prefix(ckpts[s.model])
            if s.layer_range[1] > n:
                raise MergeError(f"{recipe.origin}: layer_range {list(s.layer_range)} of {s.model} "
                                 f"goes past its {n} layers")
            prefixes[s.model] = p

    def slice_scopes(sl):
        def scopes(src):
            base = [sl.parameters, recipe.parameters]
            return base if src is None else [src.parameters] + base
        return scopes

    def non_layer(sl, pre: bool):
        first = sl.sources[0].model
        names = [n for n in ckpts[first].names()
                 if not ((m := LAYER_RE.match(n)) and m["prefix"] == prefixes[first]) and _is_pre(n) == pre]
        for name in sorted(names):
            add(name, sl.sources, [name] * len(sl.sources), sl.base_model or recipe.base_model,
                slice_scopes(sl), 0.0)

    non_layer(slices[0], pre=True)
    out_idx = 0
    layer_types = []
    for sl in slices:
        s0 = sl.sources[0]
        length = s0.layer_range[1] - s0.layer_range[0]
        for off in range(length):
            t = off / (length - 1) if length > 1 else 1.0
            src_idx = s0.layer_range[0] + off
            lead = f"{prefixes[s0.model]}.{src_idx}."
            rests = sorted(n[len(lead):] for n in ckpts[s0.model].names() if n.startswith(lead))
            for rest in rests:
                in_names = [f"{prefixes[s.model]}.{s.layer_range[0] + off}.{rest}" for s in sl.sources]
                add(f"{prefix}.{out_idx}.{rest}", sl.sources, in_names, sl.base_model or recipe.base_model,
                    slice_scopes(sl), t)
            lt = text_config(ckpts[s0.model].config).get("layer_types")
            if isinstance(lt, list) and src_idx < len(lt):
                layer_types.append(lt[src_idx])
            out_idx += 1
    non_layer(slices[-1], pre=False)
    cfg = text_config(out_cfg)
    cfg["num_hidden_layers"] = out_idx
    if "layer_types" in cfg and len(layer_types) == out_idx:
        cfg["layer_types"] = layer_types
    return tasks, out_cfg


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
    """Read the inputs of one output tensor and merge them on ``device``."""
    tensors = [ckpts[r].get(n).to(device=device, dtype=task.work_dtype) for r, n in task.inputs]
    if not task.work_dtype.is_floating_point:
        return tensors[task.base or 0]

    def rng(i):
        return tensor_generator(seed, task.name, i, device=device, candidate=candidate)

    out = method.fn(tensors, task.base, task.params, task.per_input, rng)
    if not torch.isfinite(torch.stack(torch.aminmax(out))).all():   # NaN propagates to min/max
        raise MergeError(f"tensor {task.name}: the merge produced NaN or inf "
                         f"(method {method.name}, parameters {task.params}, {task.per_input})")
    return out.to(task.out_dtype)


def run_merge(recipe: Recipe, out_dir, *, device: str = "cpu", seed: int = 0, force: bool = False,
              allow_pickle: bool = False, shard_bytes: int = 5 * 1024**3, progress: bool = True) -> dict:
    """Merge ``recipe`` into the folder ``out_dir``; returns a summary dict."""
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
        (tmp / "mergekit_config.yml").write_text(recipe.to_yaml())
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
