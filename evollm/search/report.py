"""A run's report: report.md (the table), report.json (the same data) and fitness.png."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import yaml

from ..fsutil import write_atomic


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


def save_png(fig, path: Path):
    import io

    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


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
    save_png(fig, path)


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


def plot_path(path, a: str, b: str, path_png: Path):
    """The evolved architecture: hop k on x, source layer on y, A and B in two colours, scales written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(path) + 2), 3.2), dpi=100)
    xs = list(range(len(path)))
    ax.plot(xs, [i for _, i, _ in path], "-", color="0.7", zorder=1)
    for k, (m, i, sc) in enumerate(path):
        ax.scatter([k], [i], color="tab:blue" if m == a else "tab:orange", zorder=2, s=40)
        ax.annotate(f"{sc:.2f}", (k, i), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.scatter([], [], color="tab:blue", label=f"A = {a}")
    ax.scatter([], [], color="tab:orange", label=f"B = {b}")
    ax.set_xlabel("hop")
    ax.set_ylabel("source layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path_png)


def describe_search(s, space) -> str:
    if s.space == "dfs":
        d = s.dfs
        return (f"the data-flow space of A = {d.a} and B = {d.b} ({space.dim} genes: {space.T} slot indicators, layout "
                f"{d.layout}, {d.repeats} repeat(s), and {space.n_scale} scaling genes ({d.scales}) in "
                f"[{d.scale.low}, {d.scale.high}])")
    groups = f" and layer group ({s.layer_groups} groups)" if s.layer_groups > 1 else ""
    return f"{s.method} ({space.dim} genes: {', '.join(s.params)} per model{groups})"


def search_lines(cfg, space, best: dict, fitness_items: int = None) -> list:
    """How a recipe was evolved, for its model card: space, method, optimizer, budget, seed, task, best."""
    from ..card import portable
    s, t = cfg.search, cfg.task
    items = f" ({fitness_items} items)" if fitness_items else ""
    return [f"- space: `{s.space}`, {describe_search(s, space)}",
            f"- method: {s.optimizer}, population {s.popsize}, sigma {s.sigma:.3g}, budget {s.budget} candidates, "
            f"seed {cfg.seed}",
            f"- fitness: task `{t.name}` (protocol `{t.protocol}`) on `{portable(t.fitness.data)}`{items}; "
            f"held-out test: `{portable(t.test.data)}`",
            f"- best: candidate {best['index']} (generation {best['generation']}), fitness {best['score']:.1f}"]


def write_model_card(out: Path, cfg, space, best: dict, data: dict = None) -> None:
    """best/model/README.md: the Hub metadata, the search, the recipe (or the DFS path) and, once the
    report's rows are scored (`data`), its table."""
    from ..card import card_text, is_vlm_folder, write_card
    model, s = out / "best" / "model", cfg.search
    recipe = (out / "best" / "recipe.yaml").read_text()
    doc = yaml.safe_load(recipe)
    path = best["parameters"]["path"] if s.space == "dfs" else None
    if path is not None:
        sources, method = [doc["dfs"]["a"], doc["dfs"]["b"]], None
    else:
        from ..recipe import parse_recipe
        sources, method = parse_recipe(doc, str(out / "best" / "recipe.yaml")).model_refs(), s.method
    vlm = None
    if is_vlm_folder(model):
        vlm = ("Merged: the language tower only, replaced by the evolved layer path; the vision tower and projector "
               "are A's, copied as they were." if path is not None else
               "Merged: the language tower only (its parameters, under causal-LM names); the vision tower, the "
               "projector and the VLM's extra vocabulary rows are the source VLM's, copied bit-identical.")
    write_card(model, card_text(cfg.name, sources, recipe, license=cfg.license, method=method, vlm=vlm,
                                search=search_lines(cfg, space, best, data and data["fitness_items"]),
                                table=table(data) if data else None, path=path))


def write_report(out: Path, cfg, data: dict, space, task) -> None:
    plot(data["history"], out / "fitness.png", f"fitness ({task.score_label})")
    best, tm, s = data["best"], data["timing"], cfg.search
    recipe = (out / "best" / "recipe.yaml").read_text()
    arch = []
    if s.space == "dfs":
        path = best["parameters"]["path"]
        plot_path(path, s.dfs.a, s.dfs.b, out / "path.png")
        arch = ["The evolved architecture (hop: model, layer, input scale):", "",
                "| hop | model | layer | scale |", "|---:|---|---:|---:|",
                *[f"| {k} | {m} | {i} | {sc:.3f} |" for k, (m, i, sc) in enumerate(path)], "",
                "![the evolved path](path.png)", ""]
    md = [f"# Run `{cfg.name}`", "",
          f"Machine: {machine()}. Device: {cfg.device}{workers_note(data, cfg)}.", "",
          f"Search: {s.optimizer} over {describe_search(s, space)}, "
          f"population {s.popsize}, sigma {s.sigma:.3g}, {tm.get('candidates', 0)} candidates "
          f"({data['failures']['failed']} failed), seed {cfg.seed}; fitness on {data['fitness_items']} items, "
          f"test on {data['test_items']} held-out items. Best candidate: #{best['index']} "
          f"(generation {best['generation']}).", "", *failure_block(data),
          task.note, "",
          table(data), "",
          f"Time per candidate: merge {tm.get('merge_s', 0):.2f} s + evaluation {tm.get('eval_s', 0):.2f} s "
          f"(mean over the candidates of this run folder).", "", *cost_line(tm, cfg),
          "![fitness per generation](fitness.png)", "", *arch,
          "Best recipe (`best/recipe.yaml`; `best/model/` is its export):", "", "```yaml", recipe.rstrip(), "```", ""]
    write_atomic(out / "report.md", "\n".join(md))
    write_model_card(out, cfg, space, best, data)
    write_atomic(out / "report.json", json.dumps(data, indent=1, ensure_ascii=False))


def cost_line(tm: dict, cfg) -> list:
    """The fitness items and generated tokens the search used, against scoring every candidate fully."""
    if "items" not in tm:
        return []
    if cfg.task.fitness.schedule is None:
        return [f"Fitness cost: {tm['items']} items, {tm['tokens']} generated tokens (every candidate on every item).", ""]
    return [f"Fitness cost (racing, `task.fitness.schedule`): {tm['items']} items of {tm['full_items']} "
            f"({tm['items'] / tm['full_items']:.0%}) and {tm['tokens']} generated tokens against about "
            f"{tm['full_tokens']} ({tm['tokens'] / max(tm['full_tokens'], 1):.0%}) had every candidate been scored "
            "on every item (its tokens per item scaled up).", ""]


def workers_note(data: dict, cfg) -> str:
    n, t = data.get("workers", 1), cfg.search.threads
    threads = f"{t} CPU thread{'s' * (t != 1)}" if t else "torch's default CPU threads"
    return f", {n} Ray workers x {threads}" if n > 1 else f", {threads}"


def failures(records) -> dict:
    """How many candidates failed, grouped by cause (the error with numbers and names of tensors
    blanked): {"failed", "candidates", "groups": [{"count", "error", "first"}]}, most frequent first."""
    import re
    groups = {}
    for r in records:
        if r.get("error"):
            key = re.sub(r"\d+(\.\d+)?", "N", r["error"].split("\n")[0])[:160]
            g = groups.setdefault(key, {"count": 0, "error": r["error"].split("\n")[0][:300], "first": r["index"]})
            g["count"] += 1
    return {"failed": sum(g["count"] for g in groups.values()), "candidates": len(records),
            "groups": sorted(groups.values(), key=lambda g: -g["count"])}


def failure_lines(f: dict) -> list:
    """The failures as lines for the console and report.md (empty when none failed)."""
    if not f or not f["failed"]:
        return []
    lines = [f"{f['failed']} of {f['candidates']} candidates failed (scored as the worst fitness):"]
    lines += [f"- {g['count']} x {g['error']} (first: candidate {g['first']})" for g in f["groups"]]
    return lines


def merge_failures(a: dict, b: dict) -> dict:
    return {"failed": a["failed"] + b["failed"], "candidates": a["candidates"] + b["candidates"],
            "groups": sorted(a["groups"] + b["groups"], key=lambda g: -g["count"])}


def failure_block(data: dict) -> list:
    lines = failure_lines(data.get("failures"))
    return ["**" + lines[0] + "**", "", *lines[1:], ""] if lines else []


def write_ps_dfs_report(out: Path, cfg, ps: dict, dfs: dict) -> None:
    """PS+DFS: the PS phase's table with the PS+DFS model added, then links to both phases' reports."""
    rows = dict(ps["rows"])
    rows["evolved PS+DFS (dfs/best/model)"] = dfs["rows"]["evolved (best/model)"]
    data = {**ps, "rows": rows, "failures": merge_failures(ps["failures"], dfs["failures"])}
    md = [f"# Run `{cfg.name}` (PS+DFS)", "", f"Machine: {machine()}. Device: {cfg.device}{workers_note(ps, cfg)}.", "",
          f"Phase 1, parameter space: [ps/report.md](ps/report.md). Phase 2, data-flow space over A = the PS-merged "
          f"model and B = {cfg.search.dfs.b}: [dfs/report.md](dfs/report.md).", "",
          *failure_block(data), table(data), "", "![the evolved path](dfs/path.png)", ""]
    write_atomic(out / "report.md", "\n".join(md))
    write_atomic(out / "report.json", json.dumps({"ps": ps, "dfs": dfs}, indent=1, ensure_ascii=False))
