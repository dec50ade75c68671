"""General ability through lm-eval (evollm/lmeval.py): the JP-LMEH suite's definition, the world's local
task, and a run's resident model scored in place (`evollm eval --run`)."""

import json
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from evollm import lmeval  # noqa: E402
from evollm.cli import main  # noqa: E402
from helpers import ASSETS, small  # noqa: E402


class TaskYaml(yaml.SafeLoader):
    """lm-eval's task files tag functions (`!function`); read them as text."""


TaskYaml.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def test_jp_lmeh_is_the_japanese_leaderboard_at_the_conventions_few_shot_counts():
    from lm_eval.tasks import TaskManager
    index = TaskManager().task_index
    group = yaml.load(Path(index["japanese_leaderboard"].yaml_path).read_text(), TaskYaml)
    suite = lmeval.SUITES.get("jp-lmeh")["tasks"]
    assert sorted(suite) == sorted(group["task"])
    assert suite == {"ja_leaderboard_jaqket_v2": 1, "ja_leaderboard_jcommonsenseqa": 3, "ja_leaderboard_jnli": 3,
                     "ja_leaderboard_jsquad": 2, "ja_leaderboard_marc_ja": 3, "ja_leaderboard_mgsm": 5,
                     "ja_leaderboard_xlsum": 1, "ja_leaderboard_xwinograd": 0}
    for task, shots in suite.items():          # lm-eval's own files say the same (XWinograd: unset, i.e. 0)
        cfg = yaml.load(Path(index[task].yaml_path).read_text(), TaskYaml)
        assert (cfg.get("num_fewshot") or 0) == shots, task


def test_suite_and_task_arguments():
    shots, include = lmeval.plan("world-general")
    assert shots == {"world_jcqa": 0} and Path(include[0], "world_jcqa.yaml").is_file()
    assert lmeval.plan(None, "a, b", 2) == ({"a": 2, "b": 2}, [])
    assert lmeval.plan("jp-lmeh", None, 0)[0]["ja_leaderboard_mgsm"] == 0
    with pytest.raises(ValueError, match="one of --suite"):
        lmeval.plan("jp-lmeh", "x")
    with pytest.raises(KeyError, match="unknown lm-eval suite 'nope'"):
        lmeval.plan("nope")


@pytest.mark.slow
def test_a_runs_resident_model_is_scored_in_place_as_its_folder_would_be(tmp_path, monkeypatch, capsys):
    """`evollm eval --run`: lm-eval scores the base, the sources and the evolved recipe in the run's own
    workbench model (one instance, no export); the base scores what the base's folder scores."""
    import evollm.search.pool as pool_mod
    from evollm.hub import load_causal_lm, load_tokenizer
    from evollm.search.run import run
    from lm_eval.models.huggingface import HFLM
    cfg = small(tmp_path, "world-ja-math", budget=4, popsize=4, items=4, max_new_tokens=12,
                report={"sources": True, "baselines": False})
    run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    seen, benches = [], []
    init, open_pool = HFLM.__init__, pool_mod.LocalPool.open

    def spy(self, pretrained, **kw):
        seen.append(pretrained)
        init(self, pretrained=pretrained, **kw)

    monkeypatch.setattr(HFLM, "__init__", spy)
    monkeypatch.setattr(pool_mod.LocalPool, "open", classmethod(lambda cls, *a, **kw: _record(open_pool, benches, *a, **kw)))
    assert main(["eval", "--run", str(tmp_path / "run"), "--suite", "world-general", "--fewshot", "1", "--limit", "6",
                 "--json", str(tmp_path / "g.json")]) == 0
    got = json.loads((tmp_path / "g.json").read_text())["models"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert list(got) == ["base", "ja", "math-a", "math-b", "evolved (best recipe, in memory)"]
    assert got["ja"]["mgsm"] == report["rows"]["ja"]["test"]["score"]
    assert got["evolved (best recipe, in memory)"]["mgsm"] == report["rows"]["evolved (best/model)"]["test"]["score"]
    for r in got.values():
        t = r["lmeval"]["tasks"]["world_jcqa"]
        assert t["fewshot"] == 1 and t["items"] == 6 and 0 <= t["score"] <= 100 and r["lmeval"]["average"] == t["score"]
    assert len(seen) == 5 and all(m is benches[0].model for m in seen)        # the search's model instance
    assert "| evolved (best recipe, in memory) |" in capsys.readouterr().out
    # the base in the resident model scores as the base read from its folder
    ref = str(ASSETS / "models" / "base")
    alone = lmeval.evaluate(load_causal_lm(ref, torch.float32, "cpu"), load_tokenizer(ref), {"world_jcqa": 1},
                            lmeval.plan("world-general")[1], limit=6)
    assert alone["tasks"]["world_jcqa"]["score"] == got["base"]["lmeval"]["tasks"]["world_jcqa"]["score"]


def _record(open_pool, benches, *a, **kw):
    pool = open_pool(*a, **kw)
    benches.append(pool.bench)
    return pool
