"""Planning a merge: one code for both sinks of the engine.

A recipe (a search candidate is one: `ParamSpace.recipe`) is planned in two steps:

- `Skeleton.build(recipe, sources)`: everything that depends on the recipe's models and method but not
  on its parameter values: the output tensors in order, each with its inputs (model reference, tensor
  name in that model; their positions name the random streams), the base's position, shape, work and
  output dtypes and layer position, after checking the sources against each other (architectures,
  sizes, missing tensors, shapes; errors name tensor and models). `sources` maps each model reference
  to something that reads like a `Checkpoint` (names, shape, dtype, config): a checkpoint on disk, a
  VLM's `TowerView`, or the tensors a search holds in memory.
- `Skeleton.tasks(recipe)`: the same skeleton with the recipe's parameter values resolved per tensor
  (numbers, layer gradients, name filters; `recipe.resolve`). A value depends on a tensor only through
  its layer position and which of the recipe's filter strings its name contains, so each distinct
  (parameter group, position, filter matches) is resolved once and shared by its tensors; a search
  re-resolves only that per candidate, never the skeleton.

`plan_merge(recipe, sources)` does both. The sinks (`disk.run_merge`, `memory.InMemoryMerger`) execute
the same tasks with the same executor (`execute.merge_task`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import torch

from ..checkpoint import dtype_from_name, vlm_architecture
from ..kernels.methods import MergeMethod
from ..recipe import Recipe, Source, resolve

LAYER_RE = re.compile(r"^(?P<prefix>(?:.*\.)?layers)\.(?P<idx>\d+)\.(?P<rest>.+)$")
#: config keys that must agree between the sources of a parameter-space merge
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size")


class MergeError(ValueError):
    """The sources cannot be merged as the recipe asks; the message names tensor and models."""


def text_config(cfg: dict) -> dict:
    return cfg.get("text_config") or cfg


def layer_prefix(ckpt) -> Tuple[Optional[str], int]:
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


def _check_configs(ckpts, same_depth: bool) -> None:
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


@dataclass
class TensorTask:
    """One output tensor: its inputs, the base's position among them, the resolved parameters."""
    name: str                          # output tensor name (also names its random streams)
    inputs: List[Tuple[str, str]]      # (model reference, tensor name in that model)
    base: Optional[int]                # index into inputs of the base model
    params: dict                       # resolved global parameters
    per_input: List[dict]              # resolved per-model parameters, aligned with inputs
    shape: Tuple[int, ...]
    work_dtype: torch.dtype
    out_dtype: torch.dtype
    t: float = 0.0                     # layer position in [0, 1] (gradient values)
    group: int = 0                     # parameter group: 0 for `models:`, the slice for `slices:`


def structure_key(recipe: Recipe) -> tuple:
    """What a skeleton depends on: method, models (in order), slices, dtypes; not parameter values."""
    models = tuple(s.model for s in recipe.models) if recipe.models is not None else None
    slices = (tuple((sl.base_model, tuple((s.model, s.layer_range) for s in sl.sources)) for sl in recipe.slices)
              if recipe.slices is not None else None)
    return (recipe.merge_method, recipe.base_model, models, slices, recipe.dtype, recipe.out_dtype)


def _group_sources(recipe: Recipe, group: int) -> List[Source]:
    if recipe.models is not None:
        sources = list(recipe.models)
        if recipe.base_model and recipe.base_model not in [s.model for s in sources]:
            sources.append(Source(model=recipe.base_model))
        return sources
    return recipe.slices[group].sources


def _group_scopes(recipe: Recipe, group: int):
    """scopes(src): the parameter scopes of a group, highest precedence first (src None: global)."""
    if recipe.models is not None:
        return lambda src: [recipe.parameters] if src is None else [src.parameters, recipe.parameters]
    sl = recipe.slices[group]
    return lambda src: ([sl.parameters, recipe.parameters] if src is None
                        else [src.parameters, sl.parameters, recipe.parameters])


def _collect_filters(setting, acc: set) -> None:
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list):
        for e in setting:
            if isinstance(e, dict):
                f = e.get("filter")
                if f is not None and f != "*":
                    acc.add(f)
                _collect_filters(e.get("value"), acc)


def recipe_filters(recipe: Recipe) -> Tuple[str, ...]:
    """Every name filter string the recipe's parameter values use."""
    acc: set = set()
    scopes = [recipe.parameters] + [s.parameters for s in recipe.models or []]
    for sl in recipe.slices or []:
        scopes += [sl.parameters] + [s.parameters for s in sl.sources]
    for scope in scopes:
        for v in (scope or {}).values():
            _collect_filters(v, acc)
    return tuple(sorted(acc))


@dataclass
class Skeleton:
    """A planned merge without parameter values (see the module docstring)."""
    method: MergeMethod
    slots: List[TensorTask]            # params and per_input empty
    out_config: dict
    key: tuple
    _contexts: Dict[tuple, tuple] = field(default_factory=dict)

    @classmethod
    def build(cls, recipe: Recipe, ckpts) -> "Skeleton":
        slots, out_cfg = _plan_structure(recipe, ckpts)
        return cls(recipe.method, slots, out_cfg, structure_key(recipe))

    def _context_of(self, filters: Tuple[str, ...]):
        """(context id per slot, first slot of each context) for this set of filter strings."""
        got = self._contexts.get(filters)
        if got is None:
            ids, first, index = [], [], {}
            sig = lambda n: tuple(bool(n) and f in n for f in filters)
            for k, s in enumerate(self.slots):
                key = (s.group, s.t, sig(s.name), tuple(sig(n) for _, n in s.inputs))
                if key not in index:
                    index[key] = len(first)
                    first.append(k)
                ids.append(index[key])
            got = self._contexts[filters] = (ids, first)
        return got

    def tasks(self, recipe: Recipe) -> List[TensorTask]:
        """The slots with `recipe`'s parameter values resolved (its structure must be this skeleton's)."""
        if structure_key(recipe) != self.key:
            raise ValueError(f"{recipe.origin}: recipe does not have the structure this plan was built for")
        method = self.method
        ids, first = self._context_of(recipe_filters(recipe))
        resolved = []
        for k in first:
            s = self.slots[k]
            scopes = _group_scopes(recipe, s.group)
            sources = _group_sources(recipe, s.group)
            g = {p.name: resolve(method, p.name, scopes(None), s.name, s.t, f"tensor {s.name}")
                 for p in method.params if p.scope == "global"}
            per = []
            for i, (src, (_, n)) in enumerate(zip(sources, s.inputs)):
                want = ("input",) if i == s.base else ("input", "non_base")
                per.append({p.name: resolve(method, p.name, scopes(src), n, s.t, f"model {src.model}, tensor {n}")
                            for p in method.params if p.scope in want})
            resolved.append((g, per))
        return [replace(s, params=resolved[c][0], per_input=resolved[c][1]) for s, c in zip(self.slots, ids)]


def plan_merge(recipe: Recipe, ckpts) -> Tuple[List[TensorTask], dict]:
    """The list of output tensors (parameters resolved) and the output config.json, or an error naming
    the culprit; nothing is read but headers and configs."""
    sk = Skeleton.build(recipe, ckpts)
    return sk.tasks(recipe), sk.out_config


def _plan_structure(recipe: Recipe, ckpts) -> Tuple[List[TensorTask], dict]:
    method = recipe.method
    _check_configs(ckpts, same_depth=recipe.models is not None)
    donor_ref = recipe.base_model or recipe.model_refs()[0]
    donor = ckpts[donor_ref]
    prefix, n_layers = layer_prefix(donor)
    out_cfg = copy.deepcopy(donor.config)
    tasks: List[TensorTask] = []

    def add(out_name, sources: List[Source], in_names: List[str], base_ref, t, group):
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
            shapes.append(tuple(ckpts[r].shape(n)))
        ref = base if base is not None else 0
        for r, n, s in zip(refs, in_names, shapes):
            if s != shapes[ref]:
                raise _shape_error(n, refs[ref], shapes[ref], r, s)
        stored = ckpts[refs[ref]].dtype(in_names[ref])
        work = dtype_from_name(recipe.dtype) if recipe.dtype else stored
        out = dtype_from_name(recipe.out_dtype) if recipe.out_dtype else work
        if not stored.is_floating_point:
            work = out = stored
        tasks.append(TensorTask(out_name, list(zip(refs, in_names)), base, {}, [], shapes[ref], work, out,
                                t, group))

    if recipe.models is not None:
        sources = _group_sources(recipe, 0)
        for s in sources:
            missing = sorted(set(ckpts[s.model].names()) - set(donor.names()))
            if missing:
                raise MergeError(f"model {s.model} has tensor {missing[0]} that {donor_ref} lacks; "
                                 "the models do not have the same architecture")
        for name in sorted(donor.names(), key=_sort_key(prefix)):
            add(name, sources, [name] * len(sources), recipe.base_model, layer_position(name, prefix, n_layers), 0)
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

    def non_layer(g: int, pre: bool):
        sl = slices[g]
        first = sl.sources[0].model
        names = [n for n in ckpts[first].names()
                 if not ((m := LAYER_RE.match(n)) and m["prefix"] == prefixes[first]) and _is_pre(n) == pre]
        for name in sorted(names):
            add(name, sl.sources, [name] * len(sl.sources), sl.base_model or recipe.base_model, 0.0, g)

    non_layer(0, pre=True)
    out_idx = 0
    layer_types = []
    for g, sl in enumerate(slices):
        s0 = sl.sources[0]
        length = s0.layer_range[1] - s0.layer_range[0]
        for off in range(length):
            t = off / (length - 1) if length > 1 else 1.0
            src_idx = s0.layer_range[0] + off
            lead = f"{prefixes[s0.model]}.{src_idx}."
            rests = sorted(n[len(lead):] for n in ckpts[s0.model].names() if n.startswith(lead))
            for rest in rests:
                in_names = [f"{prefixes[s.model]}.{s.layer_range[0] + off}.{rest}" for s in sl.sources]
                add(f"{prefix}.{out_idx}.{rest}", sl.sources, in_names, sl.base_model or recipe.base_model, t, g)
            lt = text_config(ckpts[s0.model].config).get("layer_types")
            if isinstance(lt, list) and src_idx < len(lt):
                layer_types.append(lt[src_idx])
            out_idx += 1
    non_layer(len(slices) - 1, pre=False)
    cfg = text_config(out_cfg)
    cfg["num_hidden_layers"] = out_idx
    if "layer_types" in cfg and len(layer_types) == out_idx:
        cfg["layer_types"] = layer_types
    return tasks, out_cfg
