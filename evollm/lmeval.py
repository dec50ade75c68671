"""General ability beside the target skill, through lm-eval (lm-evaluation-harness; the extra `evollm[lmeval]`).

A suite is lm-eval tasks (or groups) with the few-shot count each is run with: `jp-lmeh` is the Japanese
LM Evaluation Harness column of the paper's table, lm-eval's `japanese_leaderboard` tasks at the
convention's shots (JAQKET v2 1, JCommonsenseQA 3, JNLI 3, JSQuAD 2, MARC-ja 3, MGSM 5, XL-Sum 1,
XWinograd 0); front ends add theirs through the `evollm.lmeval` entry points (the world's `world-general`).
Any task or group lm-eval knows runs by name too.

The model is an instance already loaded (`HFLM(pretrained=model)`): a model folder or hub id loaded by
evollm, or the model a run's workbench merges candidates into, so the evolved recipe is scored with no
export to disk. The score of a task is its first metric x 100; a suite's average is the mean over its tasks.
"""

from __future__ import annotations

from .registry import Registry

#: the paper's JP-LMEH: lm-eval's japanese_leaderboard at the convention's few-shot counts
JP_LMEH = {"tasks": {"ja_leaderboard_jaqket_v2": 1, "ja_leaderboard_jcommonsenseqa": 3, "ja_leaderboard_jnli": 3,
                     "ja_leaderboard_jsquad": 2, "ja_leaderboard_marc_ja": 3, "ja_leaderboard_mgsm": 5,
                     "ja_leaderboard_xlsum": 1, "ja_leaderboard_xwinograd": 0},
           "include_path": None,
           "note": "JP-LMEH: lm-eval's japanese_leaderboard (datasets from the Hugging Face hub)"}

SUITES = Registry("evollm.lmeval", "lm-eval suite", {"jp-lmeh": JP_LMEH})


def require():
    """lm-eval's two entry points; an error naming the extra when it is not installed."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ValueError("lm-eval scoring needs the lm-eval package: pip install 'evollm[lmeval]'") from None
    return simple_evaluate, TaskManager


def plan(suite: str = None, tasks: str = None, fewshot: int = None) -> tuple:
    """({task or group: few-shot count, None = the task's own}, include paths) for `--suite` or `--tasks`."""
    if bool(suite) == bool(tasks):
        raise ValueError("name one of --suite (e.g. jp-lmeh) or --tasks (lm-eval task or group names)")
    if suite:
        s = SUITES.get(suite)
        shots = {t: (n if fewshot is None else fewshot) for t, n in s["tasks"].items()}
        return shots, [s["include_path"]] if s.get("include_path") else []
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--tasks {tasks!r} names no task")
    return {t: fewshot for t in names}, []


def task_scores(results: dict) -> dict:
    """lm-eval's results -> {task: {"metric", "score" (x 100), "fewshot", "items"}} for every scored task
    (groups left out: their tasks are listed)."""
    groups = {g for g, subs in results.get("group_subtasks", {}).items() if subs}
    out = {}
    for task, metrics in results["results"].items():
        if task in groups:
            continue
        cfg = results.get("configs", {}).get(task, {})
        wanted = [m["metric"] for m in cfg.get("metric_list", [])] or [k.split(",")[0] for k in metrics]
        key = next((k for m in wanted for k in metrics if k.split(",")[0] == m and isinstance(metrics[k], (int, float))),
                   None)
        if key is None:
            continue
        out[task] = {"metric": key, "score": 100.0 * float(metrics[key]),
                     "fewshot": results.get("n-shot", {}).get(task),
                     "items": results.get("n-samples", {}).get(task, {}).get("effective")}
    return out


def evaluate(model, tokenizer, shots: dict, include_paths=(), limit=None, batch_size: int = 8, seed: int = 0) -> dict:
    """Score a loaded model (`PreTrainedModel`, left as it is) on lm-eval tasks: {task: scores} (task_scores)
    plus "average". `shots`: task or group -> few-shot count (None: the task's own)."""
    import logging
    simple_evaluate, TaskManager = require()
    from lm_eval.models.huggingface import HFLM
    logging.getLogger("lm_eval").setLevel(logging.ERROR)      # its notes on an instance given as `pretrained`
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=list(include_paths) or None)
    scores = {}
    by_shots = {}
    for task, n in shots.items():
        by_shots.setdefault(n, []).append(task)
    for n, tasks in by_shots.items():
        res = simple_evaluate(model=lm, tasks=tasks, num_fewshot=n, task_manager=manager, limit=limit,
                             random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                             fewshot_random_seed=seed, bootstrap_iters=0, log_samples=False)
        scores.update(task_scores(res))
    if not scores:
        raise ValueError(f"lm-eval scored none of {list(shots)}")
    return {"tasks": scores, "average": sum(s["score"] for s in scores.values()) / len(scores)}


def table(rows: dict, mgsm_label: str = "MGSM-ja") -> str:
    """One row per model: MGSM-ja (when known), the suite's average, each task; `rows`: label ->
    {"mgsm": score or None, "lmeval": evaluate()'s result}."""
    tasks = list(dict.fromkeys(t for r in rows.values() for t in r["lmeval"]["tasks"]))
    fmt = lambda v: "" if v is None else f"{v:.1f}"
    lines = [f"| model | {mgsm_label} | average | " + " | ".join(tasks) + " |", "|---|---:|---:|" + "---:|" * len(tasks)]
    for label, r in rows.items():
        t = r["lmeval"]["tasks"]
        lines.append(f"| {label} | {fmt(r.get('mgsm'))} | {r['lmeval']['average']:.1f} | "
                     + " | ".join(fmt(t.get(k, {}).get("score")) for k in tasks) + " |")
    return "\n".join(lines)
