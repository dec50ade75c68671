"""Model cards on every export (evollm/card.py) and a run's live TensorBoard log (search/livelog.py)."""

import json
from pathlib import Path

import pytest
import yaml

from evollm.card import front_matter, portable
from evollm.cli import main
from helpers import ASSETS, family, small


def card_of(folder) -> tuple:
    text = (Path(folder) / "README.md").read_text()
    return front_matter(text), text


def test_portable_names_keep_hub_ids_and_drop_local_paths(tmp_path):
    (tmp_path / "org" / "my-model").mkdir(parents=True)
    assert portable("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"
    assert portable("augmxnt/shisa-gamma-7b-v1@main") == "augmxnt/shisa-gamma-7b-v1@main"
    assert portable(str(tmp_path / "org" / "my-model")) == "my-model"
    assert portable(str(tmp_path / "org" / "my-model"), {str(tmp_path / "org" / "my-model"): "ja"}) == "ja"
    assert portable("../models/base") == "base"


def test_merge_recipe_writes_a_hub_card_naming_every_source_and_no_local_path(tmp_path):
    base, a, b = family(tmp_path / "src", "llama")
    recipe = {"merge_method": "dare_ties", "base_model": base, "dtype": "float32",
              "models": [{"model": a, "parameters": {"weight": 0.6, "density": 0.5}},
                         {"model": b, "parameters": {"weight": 0.4, "density": 0.7}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "merged"
    assert main(["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(out), "--quiet",
                 "--license", "apache-2.0"]) == 0
    meta, text = card_of(out)
    assert meta["base_model"] == ["base", "ft0", "ft1"]
    assert meta["tags"][:2] == ["merge", "evolutionary-model-merge"] and "dare_ties" in meta["tags"]
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-generation"
    recipe_block = text.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(recipe_block)["models"][1] == {"model": "ft1", "parameters": {"weight": 0.4, "density": 0.7}}
    for f in ("README.md", "mergekit_config.yml"):
        assert str(tmp_path) not in (out / f).read_text(), f
    # no license given: the Hub's `other`, and the body says so
    assert main(["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "m2"), "--quiet"]) == 0
    meta, text = card_of(tmp_path / "m2")
    assert meta["license"] == "other" and meta["license_name"] == "unknown" and "License: none was given" in text


def test_a_vlm_card_says_which_tower_was_merged(tmp_path):
    from evollm.recipe import load_recipe
    from evovlm.export import merge_vlm
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(ASSETS / "models" / "vlm-en"), "parameters": {"weight": 0.5}},
        {"model": str(ASSETS / "models" / "ja"), "parameters": {"weight": 0.5}}]}))
    merge_vlm(load_recipe(recipe), tmp_path / "out", log=lambda *a: None)
    meta, text = card_of(tmp_path / "out")
    assert meta["base_model"] == ["vlm-en", "ja"] and "vlm" in meta["tags"]
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert "language tower of the VLM `vlm-en` only" in text and "vision tower" in text
    assert str(ASSETS) not in text and str(ASSETS) not in (tmp_path / "out" / "mergekit_config.yml").read_text()


def local_world(tmp_path, name="world-ja-math", **kw):
    """configs/NAME.yaml made small, its models as folders under tmp_path (links to the world's)."""
    from evollm.search.config import load_config
    models = tmp_path / "models"
    models.mkdir()
    for m in ("base", "ja", "math-a", "math-b"):
        (models / m).symlink_to(ASSETS / "models" / m)
    small(tmp_path, name, **kw)
    d = yaml.safe_load((tmp_path / "RUN.yaml").read_text())
    d["base_model"] = str(models / "base")
    d["models"] = [str(models / Path(m).name) for m in d["models"]]
    d["search"]["log"] = "tensorboard"
    d["license"] = "apache-2.0"
    (tmp_path / "RUN.yaml").write_text(yaml.safe_dump(d))
    return load_config(tmp_path / "RUN.yaml")


def scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}, acc


@pytest.mark.slow
def test_a_run_exports_a_card_with_its_search_and_table_and_logs_live_to_tensorboard(tmp_path):
    from evollm.search.run import read_candidates, run
    cfg = local_world(tmp_path, budget=8, popsize=4, items=4, max_new_tokens=12,
                      report={"sources": True, "baselines": False})
    data = run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    out = tmp_path / "run"
    meta, text = card_of(out / "best" / "model")
    assert meta["base_model"] == ["base", "ja", "math-a", "math-b"] and meta["license"] == "apache-2.0"
    assert "## Search" in text and "budget 8 candidates" in text and "seed 2" in text and "`ps`" in text
    assert "| evolved (best/model) |" in text and "| math-a |" in text           # the report's table
    recipe = (out / "best" / "recipe.yaml").read_text()
    assert yaml.safe_load(recipe)["base_model"] == "base" and recipe in text
    for f in ("best/recipe.yaml", "best/model/README.md", "best/model/mergekit_config.yml"):
        assert str(tmp_path) not in (out / f).read_text(), f
    # the live log: per generation (2) and per candidate (8) on one step axis, the best recipe as text
    sc, acc = scalars(out / "tensorboard")
    recs = read_candidates(out / "candidates.jsonl")
    assert [s for s, _ in sc["generation/best"]] == [3, 7]         # a generation at its last candidate's index
    assert [v for _, v in sc["generation/number"]] == [1, 2]
    hist = data["history"]
    assert [pytest.approx(v) for _, v in sc["generation/mean"]] == [h["mean"] for h in hist]
    assert [pytest.approx(v) for _, v in sc["generation/std"]] == [h["std"] for h in hist]
    assert [pytest.approx(v) for _, v in sc["generation/best_so_far"]] == [h["best_so_far"] for h in hist]
    assert [s for s, _ in sc["candidate/eval_s"]] == list(range(8))
    assert [pytest.approx(v) for _, v in sc["candidate/score"]] == [r["score"] for r in recs]
    assert acc.Tags()["tensors"] == ["best/recipe/text_summary"]
    assert json.loads((out / "report.json").read_text())["history"] == hist


@pytest.mark.slow
def test_a_resumed_runs_live_log_has_each_step_once(tmp_path, monkeypatch):
    """Killed in its second generation and resumed: the interrupted generation's steps are logged again and
    replace the first process's (TensorBoard's purge_step), so every candidate and generation shows once."""
    import evollm.search.workbench as wb
    from evollm.search.run import run
    cfg = local_world(tmp_path, budget=8, popsize=4, items=4, max_new_tokens=12,
                      report={"sources": False, "baselines": False})
    calls, real = [], wb.Workbench.evaluate_candidate

    def dies_at_the_sixth(self, params, rows):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(self, params, rows)
    monkeypatch.setattr(wb.Workbench, "evaluate_candidate", dies_at_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    monkeypatch.setattr(wb.Workbench, "evaluate_candidate", real)
    run(None, tmp_path / "run", resume=True, progress=False, log=lambda *a: None)
    sc, _ = scalars(tmp_path / "run" / "tensorboard")
    assert [s for s, _ in sc["candidate/score"]] == list(range(8))
    assert [s for s, _ in sc["generation/best"]] == [3, 7]


def test_missing_extras_are_named_before_anything_loads(monkeypatch):
    import sys

    from evollm import lmeval
    from evollm.search.livelog import check
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ValueError, match=r"search.log: .*pip install 'evollm\[tensorboard\]'"):
        check("tensorboard")
    with pytest.raises(ValueError, match=r"pip install 'evollm\[lmeval\]'"):
        lmeval.require()
