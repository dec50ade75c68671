"""Attempt 18's check (lab notebook, assets/README.md): export the CMA-ES distribution mean of a finished
`evovlm merge` run (pycma's `result.xfavorite`, clipped to the box) instead of its best-scored candidate, to
see whether the mean generalises better. Writes RUN/mean/recipe.yaml and RUN/mean/model/ (over an earlier
RUN/mean/model only with --force), merged with the run's seed as its best/ export is; score it with

    python benchmarks/vqa_cma_mean.py RUN
    python -m miniworld.report --world W --target vqa --lms scene-base scene-ja --exported RUN/mean/model
"""

import argparse
from pathlib import Path

import numpy as np

from evollm.card import portable_recipe
from evollm.checkpoint import Checkpoint
from evollm.engine.plan import text_config
from evollm.fsutil import write_atomic
from evollm.hub import resolve_model
from evollm.search import config as C
from evollm.search.runfolder import load_checkpoint
from evollm.search.space import ParamSpace
from evovlm.export import merge_vlm


def export_mean(run: Path, force: bool = False) -> dict:
    cfg = C.load_config(run / "config.yaml")
    opt = load_checkpoint(run / "checkpoint.pkl")["optimizer"]
    if not hasattr(opt, "es"):
        raise SystemExit(f"{run}: search.optimizer is {cfg.search.optimizer}, not cma: it has no mean")
    base = Checkpoint(resolve_model(cfg.base_model), name=cfg.base_model).config   # the searched tower's shape
    space = ParamSpace.of(cfg, text_config(base)["num_hidden_layers"])
    x = np.clip(np.asarray(opt.es.result.xfavorite, float), 0.0, 1.0)
    recipe, out = space.recipe(x), run / "mean"
    out.mkdir(exist_ok=True)
    # the model first: merge_vlm refuses an existing one without --force, and the recipe beside it must stay its own
    merge_vlm(recipe, out / "model", device=cfg.device, seed=cfg.seed, force=force, log=lambda *a: None)
    write_atomic(out / "recipe.yaml", portable_recipe(recipe, {m.model: m.name for m in cfg.models}).to_yaml())
    return space.per_model(x)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    print(export_mean(a.run, a.force))
