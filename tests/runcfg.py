"""Shipped run configs made small for tests: fewer candidates, items and tokens; paths made absolute."""

from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def absolute(d: dict) -> dict:
    """A config's paths (relative to configs/) made absolute, so it can be written anywhere."""
    d["base_model"] = str((CONFIGS / d["base_model"]).resolve())
    d["models"] = [str((CONFIGS / m).resolve()) for m in d["models"]]
    for s in ("fitness", "test"):
        d["task"][s]["data"] = str((CONFIGS / d["task"][s]["data"]).resolve())
    return d


def small(tmp_path, name: str, budget=8, popsize=4, items=6, max_new_tokens=24, report=None) -> dict:
    """configs/NAME.yaml with a short search on a few items, written to tmp_path/RUN.yaml and loaded."""
    from evollm.search.config import load_config
    d = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    d["search"].update(budget=budget, popsize=popsize)
    d["task"].update(max_new_tokens=max_new_tokens)
    d["task"]["fitness"]["limit"] = d["task"]["test"]["limit"] = items
    if report is not None:
        d["report"] = report
    (tmp_path / "RUN.yaml").write_text(yaml.safe_dump(absolute(d)))
    return load_config(tmp_path / "RUN.yaml")
