"""A merge recipe as data, read from and written to mergekit-style YAML.

Accepted keys (mergekit's, for what this toolkit implements):

    merge_method: ties
    base_model: path-or-hub-id
    models:                        # or `slices:` (below), not both
      - model: path-or-hub-id
        parameters: {density: 0.5, weight: [0.2, 0.8]}
    parameters: {normalize: true, lambda: 1.0}      # global
    dtype: bfloat16                 # dtype the inputs are merged in (default: stored dtype)
    out_dtype: bfloat16             # dtype written (default: dtype)
    tokenizer_source: base          # 'base' or a model reference (default: the base model)
    slices:
      - sources:
          - {model: A, layer_range: [0, 16], parameters: {scale: 1.0}}
        base_model: ...             # optional per-slice base
        parameters: {...}           # optional per-slice parameters

A parameter value is a number/bool, a list of numbers (a gradient interpolated over the
layers: layer i of L gets position i/(L-1) along the list; non-layer tensors take the first
value), or a list of {filter, value} pairs where the first pair whose filter is a substring of
the tensor name (or that has no filter, or filter '*') applies. Precedence: a source's own
parameters, then the slice's, then the global ones, then the method's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .checkpoint import dtype_from_name
from .kernels import get_method
from .kernels.methods import REQUIRED, MergeMethod, Param


class RecipeError(ValueError):
    """A recipe is malformed; the message names the file and key at fault."""


@dataclass
class Source:
    model: str
    parameters: Dict[str, Any] = field(default_factory=dict)
    layer_range: Optional[tuple] = None


@dataclass
class OutputSlice:
    sources: List[Source]
    base_model: Optional[str] = None
    parameters: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    merge_method: str
    base_model: Optional[str] = None
    models: Optional[List[Source]] = None
    slices: Optional[List[OutputSlice]] = None
    parameters: Dict[str, Any] = field(default_factory=dict)
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None
    origin: str = "<recipe>"     # where it was read from, for error messages

    @property
    def method(self) -> MergeMethod:
        return get_method(self.merge_method)

    def model_refs(self) -> List[str]:
        """Every model the recipe names, in first-mention order (base first)."""
        refs = [self.base_model] if self.base_model else []
        for s in self.models or []:
            refs.append(s.model)
        for sl in self.slices or []:
            refs += ([sl.base_model] if sl.base_model else []) + [s.model for s in sl.sources]
        return list(dict.fromkeys(refs))

    # -- YAML
    def to_dict(self) -> dict:
        d: Dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            d["base_model"] = self.base_model
        if self.models is not None:
            d["models"] = [_source_dict(s) for s in self.models]
        if self.slices is not None:
            d["slices"] = [{"sources": [_source_dict(s) for s in sl.sources],
                            **({"base_model": sl.base_model} if sl.base_model else {}),
                            **({"parameters": sl.parameters} if sl.parameters else {})}
                           for sl in self.slices]
        if self.parameters:
            d["parameters"] = self.parameters
        for k in ("dtype", "out_dtype", "tokenizer_source"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _source_dict(s: Source) -> dict:
    d: Dict[str, Any] = {"model": s.model}
    if s.layer_range is not None:
        d["layer_range"] = list(s.layer_range)
    if s.parameters:
        d["parameters"] = s.parameters
    return d


# --------------------------------------------------------------------------- parsing

_TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
             "tokenizer_source"}


def read_yaml(path, what: str = "recipe", error=RecipeError):
    """A YAML file through `safe_load`; unreadable files and malformed YAML raise `error` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: cannot read {what} (not UTF-8 text)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: malformed YAML: {e}") from None


def load_recipe(path) -> Recipe:
    return parse_recipe(read_yaml(path), origin=str(path))


def parse_recipe(data: Any, origin: str = "<recipe>") -> Recipe:
    def err(key: str, msg: str):
        return RecipeError(f"{origin}: {key}: {msg}")

    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise err(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    if "merge_method" not in data:
        raise err("merge_method", "missing")
    try:
        method = get_method(data["merge_method"])
    except ValueError as e:
        raise err("merge_method", str(e)) from None

    def ref(value, key):
        if not isinstance(value, str) or not value:
            raise err(key, f"a model reference (path or hub id) is expected, got {value!r}")
        return value

    def params(value, key) -> Dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise err(key, f"a mapping of parameter names to values is expected, got {value!r}")
        for name, setting in value.items():
            p = method.param(name)
            if p is None:
                known = ", ".join(q.name for q in method.params)
                raise err(f"{key}.{name}", f"unknown parameter for {method.name} (known: {known})")
            for v in _setting_values(setting, f"{key}.{name}", err):
                _checked(p, _num(v), f"{origin}: {key}.{name}")
        return dict(value)

    def source(d, key, sliced: bool) -> Source:
        if isinstance(d, str) and not sliced:
            return Source(model=ref(d, key))
        if not isinstance(d, dict):
            raise err(key, f"a mapping with 'model' is expected, got {d!r}")
        allowed = {"model", "parameters"} | ({"layer_range"} if sliced else set())
        extra = sorted(set(d) - allowed)
        if extra:
            raise err(f"{key}.{extra[0]}", f"unknown key (known: {', '.join(sorted(allowed))})")
        if "model" not in d:
            raise err(f"{key}.model", "missing")
        lr = None
        if sliced:
            lr = d.get("layer_range")
            if (not isinstance(lr, (list, tuple)) or len(lr) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                    or lr[0] < 0 or lr[1] <= lr[0]):
                raise err(f"{key}.layer_range", f"[start, end) with 0 <= start < end expected, got {lr!r}")
            lr = (lr[0], lr[1])
        return Source(model=ref(d["model"], f"{key}.model"),
                      parameters=params(d.get("parameters"), f"{key}.parameters"), layer_range=lr)

    models = slices = None
    if ("models" in data) == ("slices" in data):
        raise err("models", "give exactly one of 'models' or 'slices'")
    if "models" in data:
        if not isinstance(data["models"], list) or not data["models"]:
            raise err("models", "a non-empty list is expected")
        models = [source(d, f"models[{i}]", False) for i, d in enumerate(data["models"])]
    else:
        if not isinstance(data["slices"], list) or not data["slices"]:
            raise err("slices", "a non-empty list is expected")
        slices = []
        for i, sl in enumerate(data["slices"]):
            key = f"slices[{i}]"
            if not isinstance(sl, dict) or "sources" not in sl:
                raise err(key, "a mapping with 'sources' is expected")
            extra = sorted(set(sl) - {"sources", "base_model", "parameters"})
            if extra:
                raise err(f"{key}.{extra[0]}", "unknown key (known: base_model, parameters, sources)")
            if not isinstance(sl["sources"], list) or not sl["sources"]:
                raise err(f"{key}.sources", "a non-empty list is expected")
            srcs = [source(d, f"{key}.sources[{j}]", True) for j, d in enumerate(sl["sources"])]
            lengths = {s.layer_range[1] - s.layer_range[0] for s in srcs}
            if len(lengths) > 1:
                raise err(f"{key}.sources", f"all sources of a slice must span the same number of layers, got {sorted(lengths)}")
            slices.append(OutputSlice(sources=srcs,
                                      base_model=ref(sl["base_model"], f"{key}.base_model") if sl.get("base_model") else None,
                                      parameters=params(sl.get("parameters"), f"{key}.parameters")))
    if method.layer_slices and slices is None:
        raise err("slices", f"{method.name} builds the model from layer slices; give 'slices', not 'models'")

    for k in ("dtype", "out_dtype"):
        if data.get(k) is not None:
            if not isinstance(data[k], str):
                raise err(k, f"a dtype name is expected, got {data[k]!r}")
            try:
                dtype_from_name(data[k], f"{origin}: {k}")
            except ValueError as e:
                raise RecipeError(str(e)) from None
    tok = data.get("tokenizer_source")
    if tok is not None and (not isinstance(tok, str) or tok == "union"):
        raise err("tokenizer_source", f"'base' or a model reference is expected, got {tok!r} "
                  "('union' vocabularies are not supported)")
    base = ref(data["base_model"], "base_model") if data.get("base_model") else None
    if method.base == "required" and base is None and not (slices and all(s.base_model for s in slices)):
        raise err("base_model", f"{method.name} needs a base_model")
    return Recipe(merge_method=method.name, base_model=base, models=models, slices=slices,
                  parameters=params(data.get("parameters"), "parameters"),
                  dtype=data.get("dtype"), out_dtype=data.get("out_dtype"),
                  tokenizer_source=tok, origin=origin)


def _is_num_str(v) -> bool:
    """YAML reads '1e-3' as a string; mergekit accepts such numeric strings."""
    if not isinstance(v, str):
        return False
    try:
        float(v)
        return True
    except ValueError:
        return False


def _setting_values(setting, key, err):
    """Every scalar a parameter setting can produce (gradient endpoints, filtered values)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            raise err(key, "an empty list has no value")
        out = []
        for i, e in enumerate(setting):
            if isinstance(e, dict):
                extra = sorted(set(e) - {"filter", "value"})
                if extra or "value" not in e:
                    raise err(f"{key}[{i}]", "a conditional value is {filter: substring, value: ...}")
                if e.get("filter") is not None and not isinstance(e["filter"], str):
                    raise err(f"{key}[{i}].filter", f"a string is expected, got {e['filter']!r}")
                out += _setting_values(e["value"], f"{key}[{i}].value", err)
            elif isinstance(e, list):
                raise err(f"{key}[{i}]", "nested lists are not a parameter value")
            else:
                out.append(e)
        return out
    return [setting]


# --------------------------------------------------------------------------- resolution


def evaluate_setting(setting, tensor_name: str, t: float):
    """The value of one parameter setting for a tensor at layer position t in [0, 1]."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return _num(setting)
    if all(not isinstance(e, dict) for e in setting):
        values = [_num(e) for e in setting]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return values[int(t * (len(values) - 1))]
        x = t * (len(values) - 1)
        i0 = int(x)
        i1 = min(len(values) - 1, i0 + 1)
        frac = x - i0
        return (1 - frac) * values[i0] + frac * values[i1]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor_name and f in tensor_name):
            return evaluate_setting(cond["value"], tensor_name, t)
    return None


def _checked(p: Param, value, where: str):
    """``p.validate`` with its error raised as a RecipeError."""
    try:
        return p.validate(value, where)
    except ValueError as e:
        raise RecipeError(str(e)) from None


def _num(v):
    return float(v) if _is_num_str(v) else v


def resolve(method: MergeMethod, name: str, scopes, tensor_name: str, t: float, where: str):
    """Resolve parameter ``name`` from ``scopes`` (highest precedence first)."""
    p = method.param(name)
    for scope in scopes:
        if scope and name in scope:
            v = evaluate_setting(scope[name], tensor_name, t)
            if v is not None:
                return _checked(p, v, where)
    if p.default is REQUIRED:
        raise RecipeError(f"missing required parameter {name!r} for {where} "
                          f"(set it under the model's parameters or the global parameters)")
    return p.default
