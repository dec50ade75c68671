"""A run's report: report.md (the table), report.json (the same data) and fitness.png."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from .run import _write_atomic


def machine() -> str:
    import torch
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        import os
        dev = f"{cpu}, {os.cpu_count()} cores, CPU only"
    return f"{dev}; torch {torch.__version__}, Python {platform.python_version()}"


def plot(history, path: Path, ylabel: str = "fitness"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    g = [h["generation"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, style in (("best", "o-"), ("mean", "s--"), ("best_so_far", "-")):
        pts = [(x, h[key]) for x, h in zip(g, history) if h[key] is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=key.replace("_", " "), markersize=3)
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def table(data: dict) -> str:
    cols = data["columns"]
    lines = ["| model | fitness | test | " + " | ".join(f"test {c}" for _, c in cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    for label, r in data["rows"].items():
        f, t = r["fitness"], r["test"]
        bold = "**" if label.startswith("evolved") else ""
        lines.append(f"| {label} | {f['score']:.1f} | {bold}{t['score']:.1f}{bold} | "
                     + " | ".join(f"{t[k]:.1f}" for k, _ in cols) + " |")
    fmt = lambda v: "" if v is None else f"{v:.1f}"
    for label, fit, test in data["baselines"]:
        lines.append(f"| {label} | {fmt(fit)} | {fmt(test)} |" + " |" * len(cols))
    return "\n".join(lines)


def write_report(out: Path, cfg: dict, data: dict, space, task) -> None:
    plot(data["history"], out / "fitness.png", f"fitness ({task.score_label})")
    best, tm, s = data["best"], data["timing"], cfg["search"]
    groups = f" and layer group ({s['layer_groups']} groups)" if s["layer_groups"] > 1 else ""
    recipe = (out / "best" / "recipe.yaml").read_text()
    md = [f"# Run `{cfg['name']}`", "",
          f"Machine: {machine()}. Device: {cfg['device']}.", "",
          f"Search: {s['optimizer']} over {s['method']} ({space.dim} genes: "
          f"{', '.join(s['params'])} per model{groups}), "
          f"population {s['popsize']}, sigma {s['sigma']:.3g}, {tm.get('candidates', 0)} candidates "
          f"({tm.get('failed', 0)} failed), seed {cfg['seed']}; fitness on {data['fitness_items']} items, "
          f"test on {data['test_items']} held-out items. Best candidate: #{best['index']} "
          f"(generation {best['generation'] + 1}).", "",
          task.note, "",
          table(data), "",
          f"Time per candidate: merge {tm.get('merge_s', 0):.2f} s + evaluation {tm.get('eval_s', 0):.2f} s "
          f"(mean over the candidates of this run folder).", "",
          "![fitness per generation](fitness.png)", "",
          "Best recipe (`best/recipe.yaml`; `best/model/` is its export):", "", "```yaml", recipe.rstrip(), "```", ""]
    _write_atomic(out / "report.md", "\n".join(md).encode())
    _write_atomic(out / "report.json", json.dumps(data, indent=1, ensure_ascii=False).encode())
