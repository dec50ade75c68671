"""Live logging of a run (`search.log: tensorboard`): curves to watch while a long search runs.

TensorBoard event files go to RUN/tensorboard/ (`tensorboard --logdir RUN`; a PS+DFS run has one per
phase). Every scalar's step counts candidates, one axis for all of them:
- per candidate (step = its index): `candidate/score`, `candidate/merge_s`, `candidate/eval_s`;
- per generation (step = the index of its last candidate): `generation/best`, `generation/mean`,
  `generation/std`, `generation/failed`, `generation/best_so_far`, `generation/number`, and the text
  `best/recipe` (the best candidate's recipe so far, YAML).

Off by default; it changes what a run shows, not what it computes, so a resume may turn it on
(`search.log` is an execution field). A resumed run opens its writer with TensorBoard's `purge_step` at
the checkpoint's count: the steps of the interrupted generation, logged again by the resume, replace
the earlier ones instead of appearing twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

LOGGERS = ("tensorboard",)
FOLDER = "tensorboard"


def check(kind):
    """An error naming the field and the extra to install when `kind`'s package is missing (before a run loads)."""
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("search.log: tensorboard needs the tensorboard package: "
                             "pip install 'evollm[tensorboard]'") from None


class TensorBoardLog:
    def __init__(self, folder: Path, start: int):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(folder), purge_step=start or None)

    def candidate(self, rec: dict):
        step = rec["index"]
        for key in ("score", "merge_s", "eval_s"):
            if rec.get(key) is not None:
                self.writer.add_scalar(f"candidate/{key}", rec[key], step)

    def generation(self, hist: dict, scores: list, step: int, best_text: str = None):
        ok = [v for v in scores if v is not None]
        w = self.writer
        w.add_scalar("generation/number", hist["generation"], step)
        w.add_scalar("generation/failed", hist["failed"], step)
        if ok:
            w.add_scalar("generation/best", max(ok), step)
            w.add_scalar("generation/mean", float(np.mean(ok)), step)
            w.add_scalar("generation/std", float(np.std(ok)), step)
        if hist["best_so_far"] is not None:
            w.add_scalar("generation/best_so_far", hist["best_so_far"], step)
        if best_text:
            w.add_text("best/recipe", "```yaml\n" + best_text + "```", step)   # Markdown in TensorBoard's text tab
        w.flush()

    def close(self):
        self.writer.close()


def open_live(cfg, out: Path, start: int):
    """The run's live log (None when `search.log` is off); `start`: candidates already evaluated (resume)."""
    if cfg.search.log is None:
        return None
    check(cfg.search.log)
    return TensorBoardLog(out / FOLDER, start)


def best_recipe_text(space, cfg, params: dict) -> str:
    """The best candidate as its recipe (PS, models by label) or its parameters (DFS: the path), as YAML."""
    from ..card import portable_recipe
    if hasattr(space, "recipe_of"):
        return portable_recipe(space.recipe_of(params), {m.model: m.name for m in cfg.models}).to_yaml()
    return yaml.safe_dump(params, sort_keys=False, allow_unicode=True)    # a path names models by label
