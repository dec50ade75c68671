"""A run's configuration (RUN.yaml): validated with errors that name the field, then held as a frozen,
typed `RunConfig`.

Relative paths in a config are read relative to the config file's folder; hub ids stay as given.
`RunConfig.to_dict()` (every default filled in, paths absolute) is what a run folder stores as
`config.yaml` and what `--resume` compares against.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

import yaml

from ..kernels.methods import METHODS
from ..tasks import TASKS
from .optimizer import OPTIMIZERS



class ConfigError(ValueError):
    """A run config is malformed; the message names the file and the field at fault."""


# every field with its default; None = required (or no value)
DEFAULTS: dict = {
    "name": None,
    "seed": 0,
    "device": "cpu",
    "device_memory": None,          # the memory plan's budget, e.g. 80GB (default: what the device has)
    "base_model": None,
    "models": None,                 # list of model refs, or of {model: ref, name: label}
    "tokenizer": None,              # model ref whose tokenizer the task uses (default: base_model)
    "dtype": "float32",             # sources held and candidates computed in this dtype during the search
    "out_dtype": "bfloat16",        # dtype of the exported best model
    "license": None,                # the exported model card's `license` (a Hub license id); None: `other`
    "search": {
        "space": "ps",
        "method": "dare_ties",
        "fixed": {},                # method parameters not searched (e.g. normalize, lambda)
        "params": {"weight": {"low": 0.0, "high": 1.0, "init": 0.5},
                   "density": {"low": 0.0, "high": 1.0, "init": 0.5}},
        "layer_groups": 1,
        "init_from": None,          # a recipe (e.g. an earlier run's best/recipe.yaml) as the initial point
        "dfs": {                    # space: dfs (docs/design.md): A and B by model name
            "a": None, "b": None, "repeats": 3, "layout": "model-major", "scales": "matrix",
            "scale": {"low": 0.5, "high": 1.5, "init": 1.0},
        },
        "optimizer": "cma",
        "sigma": 1 / 6,
        "popsize": 8,
        "budget": 64,
        "threads": None,            # torch's CPU threads per worker (None: the cores shared out among the
                                    # workers; the run folder records the count, see `with_threads`)
        "workers": 1,               # Ray actors scoring candidates (1: this process, no Ray)
        "ray_address": None,        # a running Ray cluster to join (e.g. auto); None: Ray on this machine
        "log": None,                # live logging of the run: tensorboard (event files in RUN/tensorboard/); None: off
    },
    "task": {
        "name": "ja-math",
        "fitness": {"data": None, "split": "test", "config": "ja", "limit": None,
                    "schedule": None},      # {block, confidence, select, tolerance}: racing (race.py); None: all items
        "test": {"data": None, "split": "test", "config": "ja", "limit": None, "schedule": None},
        "protocol": None,               # evollm.protocols: ja-math improved (default) | official;
                                        # ja-vqa official (default) | world
        "max_new_tokens": None,         # generation settings; None: the protocol's
        "repetition_penalty": None,
        "num_beams": None,
        "batch_size": 64,
    },
    "report": {"baselines": True, "sources": True},
}

SPACES = ("ps", "dfs", "ps+dfs")


def _merge(defaults: dict, given: Any, where: str, origin: str) -> dict:
    if not isinstance(given, dict):
        raise ConfigError(f"{origin}: `{where or 'the config'}` must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"{origin}: unknown field(s) {', '.join(f'`{_j(where, u)}`' for u in unknown)}; "
                          f"known: {', '.join(sorted(defaults))}")
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        d = defaults[k]
        if isinstance(d, dict) and k not in ("fixed", "params"):
            out[k] = _merge(d, v if v is not None else {}, _j(where, k), origin)
        else:
            out[k] = v
    return out


def _legacy(data, origin: str):
    """`task.official_extraction` (before protocols, and in older run folders' config.yaml) read as
    `task.protocol`: true -> official, false -> improved."""
    task = data.get("task") if isinstance(data, dict) else None
    if not isinstance(task, dict) or "official_extraction" not in task:
        return data
    task = dict(task)
    flag = task.pop("official_extraction")
    if task.get("name", "ja-math") != "ja-math" and flag is False:     # a ja-vqa run's stored default
        return {**data, "task": task}
    if not isinstance(flag, bool):
        raise ConfigError(f"{origin}: `task.official_extraction` must be true or false, got {flag!r} "
                          "(it is now written `task.protocol: official | improved`)")
    if task.get("protocol") not in (None, "official" if flag else "improved"):
        raise ConfigError(f"{origin}: `task.official_extraction: {str(flag).lower()}` contradicts "
                          f"`task.protocol: {task['protocol']}`; keep only `task.protocol`")
    task["protocol"] = "official" if flag else "improved"
    return {**data, "task": task}


def _j(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _path(ref, base: Path):
    """A local path relative to the config's folder becomes absolute; hub ids stay as they are."""
    if ref is None:
        return None
    p = Path(str(ref)).expanduser()
    if p.is_absolute():
        return str(p)
    if (base / p).exists() or str(ref).startswith("."):
        return str((base / p).resolve())
    return str(ref)


@dataclass(frozen=True)
class Bounds:
    low: float
    high: float
    init: float


@dataclass(frozen=True)
class DfsConfig:
    a: Optional[str]
    b: Optional[str]
    repeats: int
    layout: str
    scales: str
    scale: Bounds


@dataclass(frozen=True)
class SearchConfig:
    space: str
    method: str
    fixed: Mapping[str, Any]            # read-only views
    params: Mapping[str, Bounds]
    layer_groups: int
    init_from: Optional[str]
    dfs: DfsConfig
    optimizer: str
    sigma: float
    popsize: int
    budget: int
    threads: Optional[int]              # torch's CPU threads: CPU float results depend on the count
    workers: int                        # how the run executes, not what it computes (see EXECUTION)
    ray_address: Optional[str]
    log: Optional[str] = None           # live logging (search/livelog.py); an execution field too


@dataclass(frozen=True)
class Schedule:
    """Racing fitness: items in blocks of `block` (a fixed seeded order); after each block a candidate
    whose upper confidence bound is below the `select`-th best lower bound of its generation (plus
    `tolerance` score points: differences too small to matter) stops."""
    block: int
    confidence: float
    select: Optional[int]               # None: the optimizer's selection, popsize // 2
    tolerance: float = 0.0


@dataclass(frozen=True)
class DataSpec:
    data: str
    split: str
    config: Optional[str]
    limit: Optional[int]
    schedule: Optional[Schedule] = None         # the fitness split's only


@dataclass(frozen=True)
class TaskConfig:
    name: str
    fitness: DataSpec
    test: DataSpec
    protocol: str
    max_new_tokens: int
    repetition_penalty: float
    num_beams: int
    batch_size: int

    @property
    def generation(self) -> dict:
        """The generation settings a task passes on (over the protocol's)."""
        return {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty,
                "num_beams": self.num_beams}


@dataclass(frozen=True)
class ModelRef:
    model: str
    name: str


@dataclass(frozen=True)
class ReportConfig:
    baselines: bool
    sources: bool


@dataclass(frozen=True)
class RunConfig:
    """A validated run config; derive variants with `dataclasses.replace` (see `RunConfig.phase`)."""
    name: str
    seed: int
    device: str
    device_memory: Optional[int]        # bytes
    base_model: str
    models: Tuple[ModelRef, ...]
    tokenizer: str
    dtype: str
    out_dtype: str
    search: SearchConfig
    task: TaskConfig
    report: ReportConfig
    license: Optional[str] = None       # the exported model card's license (card.py)

    @property
    def refs(self) -> dict:
        """model name -> model ref"""
        return {m.name: m.model for m in self.models}

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """From a dict `parse_config` has validated (every field present)."""
        s, t = d["search"], d["task"]
        return cls(
            name=d["name"], seed=d["seed"], device=d["device"], device_memory=d["device_memory"],
            base_model=d["base_model"],
            models=tuple(ModelRef(**m) for m in d["models"]), tokenizer=d["tokenizer"], dtype=d["dtype"],
            out_dtype=d["out_dtype"],
            search=SearchConfig(**{**s, "fixed": MappingProxyType(dict(s["fixed"])),
                                   "params": MappingProxyType({k: Bounds(**b) for k, b in s["params"].items()}),
                                   "dfs": DfsConfig(**{**s["dfs"], "scale": Bounds(**s["dfs"]["scale"])})}),
            task=TaskConfig(**{**t, "fitness": DataSpec(**{**t["fitness"], "schedule": t["fitness"]["schedule"] and
                                                           Schedule(**t["fitness"]["schedule"])}),
                               "test": DataSpec(**{**t["test"], "schedule": None})}),
            report=ReportConfig(**d["report"]), license=d["license"])

    def phase(self, space: str, name: str, **search) -> "RunConfig":
        """This config as one phase of a PS+DFS run: another space and name (and search fields)."""
        return dataclasses.replace(self, name=name, search=dataclasses.replace(self.search, space=space, **search))


def _plain(x):
    if dataclasses.is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (dict, MappingProxyType)):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def parse_config(data: Any, origin: str = "<config>", base_dir: Path = Path(".")) -> RunConfig:
    """Fill defaults, check every field, and make local paths absolute."""
    if data is None:
        data = {}
    data = _legacy(data, origin)
    cfg = _merge(DEFAULTS, data, "", origin)

    def err(field, msg):
        raise ConfigError(f"{origin}: `{field}` {msg}")

    def num(field, v, lo=None, hi=None, integer=False):
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (lo is not None and v < lo) or (hi is not None and v > hi):
            kind = "an integer" if integer else "a number"
            rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
            err(field, f"must be {kind}{rng}, got {v!r}")
        return v

    num("seed", cfg["seed"], 0, integer=True)
    if not isinstance(cfg["device"], str) or not cfg["device"].split(":")[0] in ("cpu", "cuda"):
        err("device", f"must be 'cpu' or 'cuda[:N]', got {cfg['device']!r}")
    if cfg["device_memory"] is not None:
        from ..fsutil import parse_size
        try:
            cfg["device_memory"] = parse_size(cfg["device_memory"])
        except ValueError as e:
            err("device_memory", f"must be a size such as 80GB ({e})")
        if cfg["device_memory"] <= 0:
            err("device_memory", f"must be positive, got {cfg['device_memory']}")
    for f in ("dtype", "out_dtype"):
        if cfg[f] not in ("float32", "bfloat16", "float16"):
            err(f, f"must be float32, bfloat16 or float16, got {cfg[f]!r}")
    if not cfg["base_model"] or not isinstance(cfg["base_model"], str):
        err("base_model", "is required (a local folder or a hub id)")
    models = cfg["models"]
    if not isinstance(models, list) or not models:
        err("models", "must be a non-empty list of models (folders or hub ids)")
    norm = []
    for i, m in enumerate(models):
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, dict) or not isinstance(m.get("model"), str) or set(m) - {"model", "name"}:
            err(f"models[{i}]", f"must be a model ref or {{model: REF, name: LABEL}}, got {m!r}")
        ref = _path(m["model"], base_dir)
        norm.append({"model": ref, "name": str(m.get("name") or Path(m["model"]).name)})
    names = [m["name"] for m in norm]
    if len(set(names)) != len(names):
        err("models", f"names must be unique (got {names}); give each a `name:`")
    cfg["models"] = norm
    cfg["base_model"] = _path(cfg["base_model"], base_dir)
    cfg["tokenizer"] = _path(cfg["tokenizer"], base_dir) or cfg["base_model"]

    s = cfg["search"]
    if s["space"] not in SPACES:
        err("search.space", f"must be one of {list(SPACES)}, got {s['space']!r}")
    if s["method"] not in METHODS:
        err("search.method", f"unknown merge method {s['method']!r}; known: {', '.join(sorted(METHODS))}")
    method = METHODS[s["method"]]
    known = {p.name: p for p in method.params}
    if not isinstance(s["fixed"], dict):
        err("search.fixed", "must be a mapping of method parameters")
    if not isinstance(s["params"], dict) or not s["params"]:
        err("search.params", "must map at least one method parameter to {low, high, init}")
    for pname in list(s["fixed"]) + list(s["params"]):
        if pname not in known:
            where = "search.fixed" if pname in s["fixed"] else "search.params"
            err(f"{where}.{pname}", f"is not a parameter of {s['method']} (it has: {', '.join(known)})")
    for pname, b in s["params"].items():
        field = f"search.params.{pname}"
        if known[pname].scope not in ("non_base", "input"):
            err(field, "is a global parameter; only per-model parameters are searched (set it in search.fixed)")
        if not isinstance(b, dict) or set(b) - {"low", "high", "init"}:
            err(field, f"must be {{low, high, init}}, got {b!r}")
        b = {"low": 0.0, "high": 1.0, "init": 0.5, **b}
        for k in ("low", "high", "init"):
            num(f"{field}.{k}", b[k])
        if not b["low"] < b["high"]:
            err(field, f"needs low < high, got [{b['low']}, {b['high']}]")
        if not b["low"] <= b["init"] <= b["high"]:
            err(f"{field}.init", f"must lie in [{b['low']}, {b['high']}], got {b['init']}")
        s["params"][pname] = {k: float(b[k]) for k in ("low", "high", "init")}
    num("search.layer_groups", s["layer_groups"], 1, integer=True)
    if s["space"] in ("dfs", "ps+dfs"):
        from ..dfs import LAYOUTS
        d = s["dfs"]
        for k in ("a", "b") if s["space"] == "dfs" else ("b",):
            if d[k] not in names:
                err(f"search.dfs.{k}", f"must name one of the models {names}, got {d[k]!r}")
        if s["space"] == "dfs" and d["a"] == d["b"]:
            err("search.dfs.b", "must differ from search.dfs.a")
        num("search.dfs.repeats", d["repeats"], 1, integer=True)
        if d["layout"] not in LAYOUTS:
            err("search.dfs.layout", f"must be one of {list(LAYOUTS)}, got {d['layout']!r}")
        if d["scales"] not in ("matrix", "target"):
            err("search.dfs.scales", f"must be `matrix` (M x M genes) or `target` (M genes), got {d['scales']!r}")
        if d["layout"] == "select" and d["repeats"] != 1:
            err("search.dfs.repeats", "must be 1 with layout `select` (one layer per depth position)")
        sc = d["scale"]
        for k in ("low", "high", "init"):
            num(f"search.dfs.scale.{k}", sc[k], 1e-6)
        if not sc["low"] <= sc["init"] <= sc["high"] or sc["low"] == sc["high"]:
            err("search.dfs.scale", f"needs low <= init <= high and low < high, got {sc}")
        if s["init_from"] is not None:
            err("search.init_from", "is for parameter-space searches only")
    if s["init_from"] is not None:
        s["init_from"] = _path(s["init_from"], base_dir)
        if not Path(s["init_from"]).is_file():
            err("search.init_from", f"must be a recipe file, {s['init_from']} is not one")
    if s["optimizer"] not in OPTIMIZERS:
        err("search.optimizer", f"must be one of {list(OPTIMIZERS)}, got {s['optimizer']!r}")
    num("search.sigma", s["sigma"], 1e-6, 1.0)
    num("search.popsize", s["popsize"], 2, integer=True)
    num("search.budget", s["budget"], 1, integer=True)
    if s["threads"] is not None:
        num("search.threads", s["threads"], 1, integer=True)
    num("search.workers", s["workers"], 1, integer=True)
    if s["ray_address"] is not None and (not isinstance(s["ray_address"], str) or not s["ray_address"]):
        err("search.ray_address", f"must be a Ray cluster address (e.g. auto, ray://HOST:10001), got {s['ray_address']!r}")

    from .livelog import LOGGERS
    if s["log"] is not None and s["log"] not in LOGGERS:
        err("search.log", f"must be one of {list(LOGGERS)} or null (off), got {s['log']!r}")
    if cfg["license"] is not None and (not isinstance(cfg["license"], str) or not cfg["license"].strip()):
        err("license", f"must be a license id such as apache-2.0 (or null), got {cfg['license']!r}")

    t = cfg["task"]
    if t["name"] not in TASKS:
        err("task.name", f"must be one of {TASKS.names()}, got {t['name']!r}")
    for split in ("fitness", "test"):
        d = t[split]
        if not d["data"]:
            err(f"task.{split}.data", "is required (a local jsonl/parquet/tsv file or a hub id)")
        d["data"] = _path(d["data"], base_dir)
        if d["limit"] is not None:
            num(f"task.{split}.limit", d["limit"], 1, integer=True)
    if t["test"]["schedule"] is not None:
        err("task.test.schedule", "must be null: the held-out test scores every item (a schedule is the fitness split's)")
    sch = t["fitness"]["schedule"]
    if sch is not None:
        field = "task.fitness.schedule"
        if not isinstance(sch, dict) or set(sch) - {"block", "confidence", "select", "tolerance"}:
            err(field, f"must be {{block: N, confidence: C, select: K, tolerance: T}} (or null: every item), "
                f"got {sch!r}")
        sch = {"block": 25, "confidence": 0.95, "select": None, "tolerance": 0.0, **sch}
        num(f"{field}.tolerance", sch["tolerance"], 0.0, 100.0)
        num(f"{field}.block", sch["block"], 1, integer=True)
        num(f"{field}.confidence", sch["confidence"], 0.5, 0.999999)
        if sch["select"] is not None:
            num(f"{field}.select", sch["select"], 1, s["popsize"], integer=True)
        t["fitness"]["schedule"] = {"block": sch["block"], "confidence": float(sch["confidence"]),
                                    "select": sch["select"], "tolerance": float(sch["tolerance"])}
    from .. import protocols
    known = protocols.names(t["name"])
    if t["protocol"] is not None and t["protocol"] not in known:
        err("task.protocol", f"must be one of {known} for task {t['name']}, got {t['protocol']!r}")
    proto = protocols.get(t["name"], t["protocol"])
    t["protocol"] = proto.name
    for k, v in proto.generation.items():
        t[k] = v if t[k] is None else t[k]
    num("task.max_new_tokens", t["max_new_tokens"], 1, integer=True)
    num("task.batch_size", t["batch_size"], 1, integer=True)
    num("task.repetition_penalty", t["repetition_penalty"], 1.0, 10.0)
    num("task.num_beams", t["num_beams"], 1, integer=True)
    for k, v in cfg["report"].items():
        if not isinstance(v, bool):
            err(f"report.{k}", f"must be true or false, got {v!r}")
    if cfg["name"] is None:
        cfg["name"] = Path(origin).stem if origin != "<config>" else "run"
    return RunConfig.from_dict(cfg)


def load_config(path, overrides: dict = None) -> RunConfig:
    """Read RUN.yaml; `overrides` (fields, dotted for nested ones: the command line's device, seed,
    search.threads) replace the file's before validation."""
    from ..recipe import read_yaml
    path = Path(path)
    data, origin = read_yaml(path, "config", ConfigError), str(path)
    if overrides and isinstance(data, (dict, type(None))):       # anything else: parse_config names it
        data = copy.deepcopy(data or {})
        for key, v in overrides.items():
            *parents, leaf = key.split(".")
            node = data
            for k in parents:
                node[k] = dict(node.get(k) or {}) if isinstance(node.get(k) or {}, dict) else node[k]
                node = node[k]
            if isinstance(node, dict):
                node[leaf] = v
        origin += f" (with {', '.join(f'{k}: {v}' for k, v in overrides.items())} from the command line)"
    return parse_config(data, origin, path.resolve().parent)


#: search fields that say how a run executes, not what it computes: a resume may change them
EXECUTION = ("workers", "ray_address", "log")


def config_diff(given: RunConfig, stored: RunConfig) -> list:
    """The top-level fields in which `given` asks for another run than `stored` (a run folder's): the
    execution fields and the budget (a resume may change it: runfolder.RunFolder.set_budget) do not count,
    and an unset `search.threads` matches the count the folder recorded."""
    g, s = given.to_dict(), stored.to_dict()
    for d in (g, s):
        for k in (*EXECUTION, "budget"):
            d["search"].pop(k)
    if g["search"]["threads"] is None:
        g["search"]["threads"] = s["search"]["threads"]
    return sorted(k for k in set(g) | set(s) if g.get(k) != s.get(k))


def with_execution(cfg: RunConfig, **fields) -> RunConfig:
    """`cfg` with execution fields (EXECUTION) replaced; None leaves a field as it is."""
    fields = {k: v for k, v in fields.items() if v is not None}
    unknown = set(fields) - set(EXECUTION)
    if unknown:
        raise ValueError(f"not execution fields: {sorted(unknown)}")
    if fields.get("workers", 1) < 1:
        raise ConfigError(f"--workers must be at least 1, got {fields['workers']}")
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, **fields)) if fields else cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
