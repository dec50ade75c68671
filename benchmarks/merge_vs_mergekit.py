"""Benchmark `evollm merge` against mergekit's `mergekit-yaml` on CPU.

What it measures
----------------
For each merge method (linear, task_arithmetic, ties, dare_ties, dare_linear,
slerp, breadcrumbs, breadcrumbs_ties, della, della_linear, model_stock,
passthrough and a TIES recipe with a per-layer density gradient and a name
filter) the script writes one recipe in mergekit's YAML syntax and runs both
tools on it, recording

* wall time of the child process (``time.perf_counter`` around it),
* peak RSS of the child (``ru_maxrss`` from ``os.wait4``, read by a small
  launcher process so that this script's own memory is not counted; it covers
  the tool and any descendants it waited for),
* agreement of the outputs: equal tensor names and shapes, and the largest
  absolute difference over all tensors.  DARE and DELLA draw random masks
  (mergekit from the global torch RNG, evollm from seeded generators), so for
  them exact agreement is not expected; the table also gives the relative
  difference of the mean |merged - base| between the two outputs.

The inputs are three random Llama models (about 125M parameters in float32):
``base`` (seeded random init) and two "fine-tunes" ``ft_a``/``ft_b`` = base +
small seeded Gaussian noise (std = 1% of each tensor's std) on a different
random half/third of the entries of every tensor, plus a shared component, so
that TIES sign election and Model Stock's angle have something to work with.
They are cached in the work dir and reused on later runs.

mergekit runs in its own virtual environment, ``benchmarks/.mergekit-venv``,
which the script creates on first use (``torch==2.13.0`` CPU wheel, then
``mergekit==0.1.5``) and times.

How to run
----------
With the project's python (torch, transformers, safetensors and evollm
installed), from the repository root::

    python benchmarks/merge_vs_mergekit.py                  # everything
    python benchmarks/merge_vs_mergekit.py --methods linear,ties
    python benchmarks/merge_vs_mergekit.py --preset tiny    # quick smoke run

The markdown table is printed and written to ``benchmarks/merge_vs_mergekit.md``
(``--report`` to change).  See ``--help`` for the other options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

BENCH_DIR = Path(__file__).resolve().parent
MERGEKIT_VENV = BENCH_DIR / ".mergekit-venv"
INSTALL_NOTE = MERGEKIT_VENV / "benchmark-install-time.txt"
MERGEKIT_SPEC = "mergekit==0.1.5"
# A plain `torch` would pull the multi-GB CUDA build; 2.13.0 is a small CPU wheel here.
MERGEKIT_TORCH_SPEC = "torch==2.13.0"
MERGEKIT_FLAGS = ["--no-copy-tokenizer", "--random-seed", "0"]
EVOLLM_FLAGS = ["--device", "cpu", "--seed", "0"]
# Child processes must not try to reach the Hugging Face hub.
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# Model shapes.  "default" is ~125M parameters (~480 MiB per model in float32).
PRESETS = {
    "default": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    ),
}
# (name, torch seed, fraction of entries perturbed) for each fine-tune.
FINETUNES = [("ft_a", 1, 0.5), ("ft_b", 2, 0.3)]
SHARED_NOISE_SEED = 3
NOISE_SCALE = 0.01  # std of the noise relative to the tensor's std


# --------------------------------------------------------------------------
# Recipes (mergekit syntax).  $base, $ft_a, $ft_b are model paths; $half and
# $layers are the layer counts for passthrough.
# --------------------------------------------------------------------------
def _two_finetunes(method: str, params_a: str, params_b: str, base: bool = True) -> str:
    """A recipe merging ft_a and ft_b (with `base` as base model unless base=False)."""
    return (
        f"merge_method: {method}\n"
        + ("base_model: $base\n" if base else "")
        + "dtype: float32\n"
        + "models:\n"
        + "  - model: $ft_a\n"
        + "    parameters: {%s}\n" % params_a
        + "  - model: $ft_b\n"
        + "    parameters: {%s}\n" % params_b
    )


_DARE = "density: 0.5, weight: 0.5"
_BREADCRUMBS = "density: 0.9, gamma: 0.01, weight: 0.5"
_DELLA = "density: 0.5, epsilon: 0.1, weight: 0.5"
RECIPES = {
    "linear": _two_finetunes("linear", "weight: 0.3", "weight: 0.7", base=False),
    "task_arithmetic": _two_finetunes("task_arithmetic", "weight: 0.5", "weight: 0.8"),
    "ties": _two_finetunes("ties", "density: 0.5, weight: 0.6", "density: 0.3, weight: 0.4"),
    "dare_ties": _two_finetunes("dare_ties", _DARE, _DARE),
    "dare_linear": _two_finetunes("dare_linear", _DARE, _DARE),
    "slerp": """merge_method: slerp
base_model: $base
dtype: float32
models:
  - model: $base
  - model: $ft_a
parameters:
  t: [0, 0.5, 1]
""",
    "breadcrumbs": _two_finetunes("breadcrumbs", _BREADCRUMBS, _BREADCRUMBS),
    "breadcrumbs_ties": _two_finetunes("breadcrumbs_ties", _BREADCRUMBS, _BREADCRUMBS),
    "della": _two_finetunes("della", _DELLA, _DELLA),
    "della_linear": _two_finetunes("della_linear", _DELLA, _DELLA),
    "model_stock": """merge_method: model_stock
base_model: $base
dtype: float32
models:
  - model: $ft_a
  - model: $ft_b
""",
    "passthrough": """merge_method: passthrough
dtype: float32
slices:
  - sources:
      - model: $base
        layer_range: [0, $half]
  - sources:
      - model: $ft_a
        layer_range: [$half, $layers]
""",
    "ties_gradient": """merge_method: ties
base_model: $base
dtype: float32
models:
  - model: $ft_a
  - model: $ft_b
parameters:
  density: [0.2, 0.8]
  weight:
    - filter: mlp
      value: 0.7
    - value: 0.3
""",
}
RANDOM_METHODS = {"dare_ties", "dare_linear", "della", "della_linear"}
DIFF_TOL = 1e-6  # elements differing by more than this are counted


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run_checked(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, raising with its output tail if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return proc


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------
# mergekit venv
# --------------------------------------------------------------------------
def venv_bin(name: str) -> Path:
    return MERGEKIT_VENV / "bin" / name


def mergekit_works() -> bool:
    exe = venv_bin("mergekit-yaml")
    if not exe.exists():
        return False
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=child_env())
    return proc.returncode == 0


def ensure_mergekit(skip_install: bool) -> str:
    """Create the mergekit venv if needed; return a note on what was done."""
    if mergekit_works():
        note = INSTALL_NOTE.read_text().strip() if INSTALL_NOTE.exists() else "?"
        return f"already present ({note} when it was created)"
    if skip_install:
        raise SystemExit(f"--skip-mergekit-install given but {venv_bin('mergekit-yaml')} does not work")
    log(f"creating {MERGEKIT_VENV} ...")
    t0 = time.perf_counter()
    run_checked([sys.executable, "-m", "venv", "--clear", str(MERGEKIT_VENV)])
    pip = [str(venv_bin("python")), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    log(f"installing {MERGEKIT_TORCH_SPEC} ...")
    run_checked(pip + [MERGEKIT_TORCH_SPEC])
    t1 = time.perf_counter()
    log(f"installing {MERGEKIT_SPEC} ...")
    # Naming torch again keeps pip from swapping it for another build.
    run_checked(pip + [MERGEKIT_SPEC, MERGEKIT_TORCH_SPEC])
    t2 = time.perf_counter()
    if not mergekit_works():
        raise SystemExit("mergekit-yaml --help fails in the fresh venv")
    note = (
        f"installed in {t2 - t0:.0f} s: venv + {MERGEKIT_TORCH_SPEC} {t1 - t0:.0f} s, "
        f"{MERGEKIT_SPEC} and deps {t2 - t1:.0f} s"
    )
    INSTALL_NOTE.write_text(note + "\n")
    log(note)
    return note


def describe_env(python: str, tool: str, log_file: Path) -> str:
    """Versions in an environment, and the peak RSS of just importing torch there."""
    code = (
        "import importlib, importlib.metadata as m, torch, transformers, safetensors\n"
        f"tool = {tool!r}\n"
        "try:\n"
        "    version = m.version(tool)\n"
        "except m.PackageNotFoundError:  # on PYTHONPATH, not installed (--same-torch)\n"
        "    version = importlib.import_module(tool).__version__ + ' (from PYTHONPATH)'\n"
        "print(f'{tool} {version}, torch {torch.__version__}, '\n"
        "      f'transformers {transformers.__version__}, safetensors {safetensors.__version__}')"
    )
    res = timed_run([python, "-c", code], log_file)
    if res.error:
        return f"`{python}`: {res.error}"
    versions = last_line(log_file.read_text())
    return (
        f"`{python}`: {versions}; importing torch, transformers and safetensors alone "
        f"peaks at {res.peak_rss_mib:.0f} MiB RSS"
    )


# --------------------------------------------------------------------------
# Input models
# --------------------------------------------------------------------------
def build_models(workdir: Path, preset: str) -> dict[str, Path]:
    """Create base, ft_a and ft_b under workdir/models-<preset> (cached)."""
    root = workdir / f"models-{preset}"
    paths = {name: root / name for name in ["base"] + [f[0] for f in FINETUNES]}
    # The cache is valid only for the same shapes, seeds and noise.
    spec = json.dumps(
        {
            "shapes": PRESETS[preset],
            "finetunes": FINETUNES,
            "shared_seed": SHARED_NOISE_SEED,
            "noise": NOISE_SCALE,
        },
        sort_keys=True,
    )
    spec_file = root / "spec.json"
    if spec_file.exists() and spec_file.read_text() == spec and all(p.exists() for p in paths.values()):
        return paths
    shutil.rmtree(root, ignore_errors=True)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    log(f"building {preset} models in {root} ...")
    t0 = time.perf_counter()
    config = LlamaConfig(tie_word_embeddings=False, **PRESETS[preset])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    save_model(model, paths["base"])
    base_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}

    for name, seed, fraction in FINETUNES:
        shared = torch.Generator().manual_seed(SHARED_NOISE_SEED)
        own = torch.Generator().manual_seed(seed)
        new_sd = {}
        for key, tensor in base_sd.items():
            scale = NOISE_SCALE * tensor_scale(tensor)
            common = torch.randn(tensor.shape, generator=shared)
            noise = torch.randn(tensor.shape, generator=own)
            mask = torch.rand(tensor.shape, generator=own) < fraction
            new_sd[key] = tensor + scale * mask * (0.5 * common + noise)
        model.load_state_dict(new_sd)
        save_model(model, paths[name])
    spec_file.write_text(spec)  # written last: marks the cache complete
    log(f"built the models in {time.perf_counter() - t0:.0f} s")
    return paths


def tensor_scale(tensor) -> float:
    """The tensor's std, or its mean |value| for constant tensors (norms)."""
    std = float(tensor.float().std()) if tensor.numel() > 1 else 0.0
    return std if std > 0 else float(tensor.abs().mean()) or 1.0


def save_model(model, path: Path) -> None:
    from evollm.fsutil import AtomicFolder
    with AtomicFolder(path, force=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)


def count_params(model_dir: Path) -> int:
    total = 0
    for _name, shape in iter_shapes(model_dir):
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def warm_page_cache(paths: dict[str, Path]) -> None:
    """Read the model files once so neither tool pays the cold-disk cost."""
    for p in paths.values():
        for f in p.glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass


# --------------------------------------------------------------------------
# Running the tools
# --------------------------------------------------------------------------
@dataclass
class RunResult:
    seconds: float | None = None
    peak_rss_mib: float | None = None
    error: str | None = None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CHILD_ENV)
    env.pop("VIRTUAL_ENV", None)
    return env


# ru_maxrss of a child also counts the memory its parent had when it forked
# and exec'd (Linux folds the old address space's high-water mark into the new
# program's), and this script holds the models and torch in memory.  So each
# tool is started by this tiny stdlib-only launcher in a fresh interpreter,
# which times it and reads its rusage.
_LAUNCHER = """
import json, os, subprocess, sys, time
cmd, log = json.loads(sys.argv[1]), sys.argv[2]
with open(log, "wb") as out:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "maxrss_kib": usage.ru_maxrss,
                  "exit": os.waitstatus_to_exitcode(status)}))
"""


def timed_run(cmd: list[str], log_file: Path) -> RunResult:
    """Run cmd via the launcher: wall time and the child's peak RSS (ru_maxrss, KiB)."""
    launcher = [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(cmd), str(log_file)]
    proc = subprocess.run(launcher, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        return RunResult(error=f"launcher failed: {last_line(proc.stderr)}")
    stats = json.loads(proc.stdout)
    if stats["exit"] != 0:
        return RunResult(error=f"exit {stats['exit']}: {last_line(log_file.read_text(errors='replace'))}")
    return RunResult(seconds=stats["seconds"], peak_rss_mib=stats["maxrss_kib"] / 1024)


def evollm_command(override: str | None) -> list[str]:
    if override:
        return shlex.split(override)
    script = Path(sys.executable).parent / "evollm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "evollm.cli"]


def tool_commands(evollm: list[str]) -> dict[str, Callable[[Path, Path], list[str]]]:
    """Map tool name -> function(recipe, out_dir) -> argv."""
    return {
        "evollm": lambda r, o: evollm + ["merge", "--recipe", str(r), "--out", str(o)] + EVOLLM_FLAGS,
        "mergekit": lambda r, o: [str(venv_bin("mergekit-yaml")), str(r), str(o)] + MERGEKIT_FLAGS,
    }


def run_tool(argv_for, recipe: Path, out_dir: Path, repeat: int) -> RunResult:
    """Run a tool `repeat` times; keep the min time, the max RSS, and the last output."""
    best = RunResult()
    for _ in range(repeat):
        shutil.rmtree(out_dir, ignore_errors=True)
        res = timed_run(argv_for(recipe, out_dir), out_dir.with_suffix(".log"))
        if res.error:
            return res
        best.seconds = res.seconds if best.seconds is None else min(best.seconds, res.seconds)
        best.peak_rss_mib = max(best.peak_rss_mib or 0.0, res.peak_rss_mib)
    return best


# --------------------------------------------------------------------------
# Comparing outputs
# --------------------------------------------------------------------------
def tensor_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for sharded or single-file checkpoints."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / fname for name, fname in weight_map.items()}
    from safetensors import safe_open

    files = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            files.update({name: f for name in st.keys()})
    if not files:
        raise FileNotFoundError(f"no safetensors files in {model_dir}")
    return files


def load_tensor(files: dict[str, Path], name: str):
    from safetensors import safe_open

    with safe_open(str(files[name]), framework="pt") as st:
        return st.get_tensor(name)


def iter_shapes(model_dir: Path):
    from safetensors import safe_open

    for name, f in tensor_files(model_dir).items():
        with safe_open(str(f), framework="pt") as st:
            yield name, tuple(st.get_slice(name).get_shape())


@dataclass
class Comparison:
    max_abs_diff: float | None = None
    worst_tensor: str | None = None
    n_differ: int = 0  # elements with |a - b| > DIFF_TOL
    n_total: int = 0
    delta_rel_diff: float | None = None  # of mean |out - base|, evollm vs mergekit
    problem: str | None = None
    notes: list[str] = field(default_factory=list)


def compare_outputs(a_dir: Path, b_dir: Path, base_dir: Path | None) -> Comparison:
    """Max |a - b| over all tensors, and mean |x - base| of a and b if base given."""
    a_files, b_files = tensor_files(a_dir), tensor_files(b_dir)
    only_a, only_b = sorted(set(a_files) - set(b_files)), sorted(set(b_files) - set(a_files))
    cmp = Comparison()
    if only_a or only_b:
        cmp.problem = "tensor names differ"
        cmp.notes.append(f"only in evollm: {only_a[:5]}{' ...' if len(only_a) > 5 else ''}")
        cmp.notes.append(f"only in mergekit: {only_b[:5]}{' ...' if len(only_b) > 5 else ''}")
    base_files = tensor_files(base_dir) if base_dir else {}
    sums = {"a": 0.0, "b": 0.0}
    n_delta = 0
    worst = -1.0
    for name in sorted(set(a_files) & set(b_files)):
        ta, tb = load_tensor(a_files, name), load_tensor(b_files, name)
        if ta.shape != tb.shape:
            cmp.problem = "shapes differ"
            cmp.notes.append(f"{name}: {tuple(ta.shape)} vs {tuple(tb.shape)}")
            continue
        if ta.dtype != tb.dtype:
            cmp.notes.append(f"{name}: dtype {ta.dtype} vs {tb.dtype}")
        ta, tb = ta.double(), tb.double()
        absdiff = (ta - tb).abs()
        diff = float(absdiff.max()) if ta.numel() else 0.0
        cmp.n_differ += int((absdiff > DIFF_TOL).sum())
        cmp.n_total += ta.numel()
        del absdiff
        if diff > worst:
            worst, cmp.worst_tensor = diff, name
        if name in base_files:
            tbase = load_tensor(base_files, name).double()
            if tbase.shape == ta.shape:
                sums["a"] += float((ta - tbase).abs().sum())
                sums["b"] += float((tb - tbase).abs().sum())
                n_delta += ta.numel()
    cmp.max_abs_diff = worst if worst >= 0 else None
    if n_delta and sums["b"] > 0:
        cmp.delta_rel_diff = abs(sums["a"] - sums["b"]) / sums["b"]
    return cmp


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
@dataclass
class Row:
    method: str
    evollm: RunResult
    mergekit: RunResult
    comparison: Comparison | None


def fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}"


def row_cells(row: Row) -> list[str]:
    e, m, c = row.evollm, row.mergekit, row.comparison
    errors = [f"{tool}: {r.error}" for tool, r in (("evollm", e), ("mergekit", m)) if r.error]
    if errors:
        diff = ("error: " + "; ".join(errors))[:200]
    elif c is None:
        diff = "–"
    elif c.problem:
        diff = c.problem
    else:
        diff = fmt(c.max_abs_diff, ".2e")
        if c.n_differ and row.method not in RANDOM_METHODS:
            diff += f" ({c.n_differ} elements > {DIFF_TOL:g})"
    if row.method in RANDOM_METHODS:
        kind = "random (statistics)"
        if c and c.delta_rel_diff is not None:
            kind += f": mean abs Δ differs by {100 * c.delta_rel_diff:.2f}%"
    else:
        kind = "deterministic"
    return [
        row.method,
        diff.replace("|", "/"),
        kind,
        fmt(e.seconds, ".1f"),
        fmt(m.seconds, ".1f"),
        ratio(e.seconds, m.seconds),
        fmt(e.peak_rss_mib, ".0f"),
        fmt(m.peak_rss_mib, ".0f"),
        ratio(e.peak_rss_mib, m.peak_rss_mib),
    ]


def machine_header(
    envs: dict[str, str], model_info: str, install_note: str, evollm_cmd: list[str], repeat: int
) -> str:
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    processor = platform.processor() or cpu_model_name()
    lines = [
        "# evollm merge vs mergekit-yaml (CPU)",
        "",
        f"- machine: {processor}, {os.cpu_count()} CPUs, {mem_kib / 1024**2:.1f} GiB RAM, "
        f"{platform.platform()}, python {platform.python_version()}",
    ]
    lines += [f"- {tool} env {desc}" for tool, desc in envs.items()]
    lines += [
        f"- mergekit venv `{MERGEKIT_VENV.relative_to(BENCH_DIR.parent)}`: {install_note}",
        f"- models: {model_info}",
        f"- evollm: `{shlex.join(evollm_cmd)} merge --recipe R --out DIR {' '.join(EVOLLM_FLAGS)}`",
        f"- mergekit: `mergekit-yaml R DIR {' '.join(MERGEKIT_FLAGS)}` (other flags at their defaults: "
        "CPU, one output shard up to 5B parameters, safetensors, no lazy unpickle)",
        f"- time: best of {repeat} run(s) of the whole process (start-up, imports, load, merge, write); "
        "peak RSS: ru_maxrss of the tool's process",
    ]
    return "\n".join(lines)


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


NOTES = """\
Notes: max abs diff is over all tensors of the two outputs (float32).  For a
deterministic method a handful of differing elements can come from entries
with exactly equal |delta| at the top-k threshold of TIES/breadcrumbs, which
the two tools' sorts break differently.  DARE and DELLA draw their masks from
different random streams (mergekit: the global torch RNG seeded by
--random-seed; evollm: its own seeded generators), so single elements differ
by up to a whole delta; for them the kind column compares the mean
|merged - base| of the two outputs instead."""


def render_report(header: str, rows: list[Row]) -> str:
    columns = [
        "method",
        "max abs diff",
        "kind",
        "evollm s",
        "mergekit s",
        "time ratio (evollm/mergekit)",
        "evollm peak RSS MiB",
        "mergekit peak RSS MiB",
        "RSS ratio",
    ]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    lines += ["", NOTES]
    details = []
    for r in rows:
        c = r.comparison
        if c and c.worst_tensor and c.max_abs_diff:
            details.append(
                f"- {r.method}: {c.n_differ:,} of {c.n_total:,} elements differ by more than "
                f"{DIFF_TOL:g}; largest difference in `{c.worst_tensor}`"
            )
        for note in (c.notes if c else [])[:6]:
            details.append(f"  - {note}")
        for tool, res in (("evollm", r.evollm), ("mergekit", r.mergekit)):
            if res.error:
                details.append(f"- {r.method}: {tool} failed: `{res.error}`")
    if details:
        lines += ["", "Details:", ""] + details
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", help=f"comma-separated subset of: {','.join(RECIPES)}")
    p.add_argument("--workdir", type=Path, default=BENCH_DIR / ".work", help="models, recipes, outputs")
    p.add_argument("--preset", choices=PRESETS, default="default", help="model size")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool and method (min time)")
    p.add_argument("--skip-mergekit-install", action="store_true", help="fail if the venv is missing")
    p.add_argument("--evollm-cmd", help="command for evollm (default: evollm next to this python)")
    p.add_argument("--tools", default="evollm,mergekit", help="tools to run (comparison needs both)")
    p.add_argument("--keep-outputs", action="store_true", help="keep merged models in the work dir")
    p.add_argument("--same-torch", action="store_true",
                   help="run evollm with the mergekit venv's python (the repository on PYTHONPATH), so "
                        "both tools use the same torch build and pay the same import cost")
    p.add_argument("--report", type=Path, help="default: benchmarks/merge_vs_mergekit.md "
                                              "(merge_vs_mergekit_same_torch.md with --same-torch)")
    args = p.parse_args(argv)
    if args.report is None:
        args.report = BENCH_DIR / ("merge_vs_mergekit_same_torch.md" if args.same_torch else "merge_vs_mergekit.md")
    args.methods = args.methods.split(",") if args.methods else list(RECIPES)
    unknown = [m for m in args.methods if m not in RECIPES]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(RECIPES)}")
    args.tools = args.tools.split(",")
    return args


def write_recipe(method: str, models: dict[str, Path], n_layers: int, recipe_dir: Path) -> Path:
    text = Template(RECIPES[method]).substitute(
        {k: str(v) for k, v in models.items()}, half=n_layers // 2, layers=n_layers
    )
    recipe_dir.mkdir(parents=True, exist_ok=True)
    path = recipe_dir / f"{method}.yaml"
    path.write_text(text)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = args.workdir.resolve()
    install_note = ensure_mergekit(args.skip_mergekit_install) if "mergekit" in args.tools else "not used"
    workdir.mkdir(parents=True, exist_ok=True)
    models = build_models(workdir, args.preset)
    n_params = count_params(models["base"])
    n_layers = PRESETS[args.preset]["num_hidden_layers"]
    model_info = (
        f"3 random Llama models (`{args.preset}` preset: {PRESETS[args.preset]}, untied embeddings), "
        f"{n_params / 1e6:.1f}M parameters, {4 * n_params / 2**20:.0f} MiB each in float32"
    )
    warm_page_cache(models)
    if args.same_torch:
        os.environ["PYTHONPATH"] = str(BENCH_DIR.parent)
        evollm_python = str(venv_bin("python"))
        evollm = [evollm_python, "-m", "evollm.cli"]
    else:
        evollm_python = sys.executable
        evollm = evollm_command(args.evollm_cmd)
    commands = tool_commands(evollm)
    envs = {"evollm": describe_env(evollm_python, "evollm", workdir / "env-evollm.log")}
    if "mergekit" in args.tools:
        envs["mergekit"] = describe_env(str(venv_bin("python")), "mergekit", workdir / "env-mergekit.log")

    rows = []
    for method in args.methods:
        recipe = write_recipe(method, models, n_layers, workdir / "recipes")
        outs = {tool: workdir / "out" / tool / method for tool in commands}
        results = {}
        for tool, argv_for in commands.items():
            if tool not in args.tools:
                results[tool] = RunResult()  # not run: empty cells
                continue
            log(f"{method}: running {tool} ...")
            outs[tool].parent.mkdir(parents=True, exist_ok=True)
            results[tool] = run_tool(argv_for, recipe, outs[tool], args.repeat)
            r = results[tool]
            log(f"{method}: {tool} " + (r.error or f"{r.seconds:.1f} s, {r.peak_rss_mib:.0f} MiB"))
        comparison = None
        if all(r.seconds is not None for r in results.values()):
            try:
                comparison = compare_outputs(outs["evollm"], outs["mergekit"], models["base"])
            except Exception as exc:  # a broken output must not stop the benchmark
                comparison = Comparison(problem=f"comparison failed: {exc}")
        rows.append(Row(method, results["evollm"], results["mergekit"], comparison))
        if not args.keep_outputs:
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)

    report = render_report(machine_header(envs, model_info, install_note, evollm, args.repeat), rows)
    print(report)
    args.report.write_text(report)
    log(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
