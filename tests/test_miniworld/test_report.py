"""The world report: baselines, its search (an ordinary run), and the lab notebook's probes."""

import numpy as np
import pytest

from evollm.tasks import mgsm
from miniworld import report

from helpers import ASSETS


def test_baselines_use_the_fitness_mode_and_the_test_range():
    fit = [{"answer_number": a} for a in (3, 3, 5)]
    test = [{"answer_number": a} for a in (3, 4, 6, 7)]
    b = mgsm.answer_baselines(fit, test)
    assert (b["constant"], b["constant_answer"]) == (25.0, 3) and b["chance"] == pytest.approx(100 / 5)
    assert b["constant_fitness"] == pytest.approx(200 / 3)


@pytest.mark.slow
def test_the_world_search_is_an_ordinary_run_seeded_and_bounded():
    """The report's search goes through the run loop (evollm.search.run): the same seed gives the same
    result, parameters stay in their bounds, layer groups give per-layer gradients."""
    import json
    task = {"fitness": {"data": str(ASSETS / "data" / "mgsm-ja" / "fitness.jsonl"), "limit": 6},
            "test": {"data": str(ASSETS / "data" / "mgsm-ja" / "test.jsonl"), "limit": 6}, "max_new_tokens": 16}
    kw = dict(budget=4, popsize=4, seed=3, weight_max=2.0, layer_groups=2, log=lambda *a: None)
    a = report.searched(ASSETS, ["models/ja", "models/math-a"], "ja-math", task, **kw)
    assert a == report.searched(ASSETS, ["models/ja", "models/math-a"], "ja-math", task, **kw)
    score, per = a
    layers = json.loads((ASSETS / "models" / "base" / "config.json").read_text())["num_hidden_layers"]
    assert set(per) == {"ja", "math-a"} and 0 <= score <= 100
    for p in per.values():
        assert len(p["weight"]) == len(p["density"]) == layers
        assert all(0 <= w <= 2 for w in p["weight"]) and all(0.05 <= d <= 1 for d in p["density"])
        assert p["weight"][0] == p["weight"][layers // 2 - 1] and len(set(p["weight"])) <= 2


def test_vqa_grid_merges_the_tower_and_scores_both_splits():
    """The lab notebook's VQA probe: at (vlm-en 1, ja 0) the merged tower is vlm-en's own, so it scores
    what the VLM scores unmerged."""
    from evovlm.data import load_ja_vg_vqa
    from evovlm.infer import load_vlm
    from miniworld.vlm import evaluate_vqa
    assets = ASSETS
    res = report.vqa_grid(assets, items=3, points=((1, 0), (0, 1)), log=lambda *_: None)
    assert set(res) == {"1/0", "0/1"} and all(0 <= r[s] <= 100 for r in res.values() for s in ("fit", "test"))
    vlm, proc = load_vlm(assets / "models" / "vlm-en")
    test = load_ja_vg_vqa(str(assets / "data" / "ja-vg-vqa-500" / "test.parquet")).select(range(3))
    plain = evaluate_vqa(vlm, proc, test, max_new_tokens=24)
    assert res["1/0"]["test_predictions"] == plain["predictions"] != res["0/1"]["test_predictions"]
    assert res["1/0"]["test"] == round(plain["rouge_l"], 1)


@pytest.mark.slow
def test_mgsm_grid_at_a_single_source_scores_that_source():
    """The lab notebook's fine-tune probe: at (ja 0, math-a 1) the merge is math-a itself."""
    assets = ASSETS
    res = report.mgsm_grid(assets, items=8, points=((0, 1), (1, 0)), log=lambda *_: None)
    tok, sd, model = report.load_world(assets)
    fit = report.read_rows(assets / "data" / "mgsm-ja" / "fitness.jsonl")
    sub = [fit[i] for i in sorted(np.random.RandomState(1).choice(len(fit), 8, replace=False))]
    model.load_state_dict(sd["math-a"])
    r = mgsm.evaluate(model, tok, sub, max_new_tokens=48, batch_size=256)
    assert res["grid"]["0/1"] == {k: round(v, 1) for k, v in r.items() if k not in ("items", "protocol")}
    assert res["grid"]["0/1"]["lang_rate"] == 0 < res["grid"]["1/0"]["lang_rate"]
    assert set(res["untuned"]) == {"task arithmetic 1/1/1", "TIES d=0.5", "DARE-TIES d=0.5"}


def test_vqa_report_scores_an_exported_vlm_as_it_is(monkeypatch):
    """`--exported`: the evolved rows are the folder's own model (no recipe re-drawn), on both test sets,
    the second time with the images shuffled."""
    import miniworld.vlm as V
    calls = []

    def fake(model, proc, ds, seed=0, shuffle_images=False, **kw):
        calls.append((model, len(ds), shuffle_images))
        return {"rouge_l": 10.0 * len(calls), "questions": ["q"], "predictions": ["p"]}
    monkeypatch.setattr(V, "evaluate_vqa", fake)
    res = report.run_vqa(ASSETS, exported=ASSETS / "models" / "vlm-en", lms=("base", "ja"), log=lambda *_: None)
    assert list(res["rows"])[-2:] == ["evolved (the exported VLM)", "evolved (the exported VLM), images shuffled"]
    assert res["exported"] == "vlm-en" and "search" not in res and "recipe" not in res
    mine = calls[-4:]
    assert [s for _, _, s in mine] == [False, False, True, True] and len({id(m) for m, _, _ in mine}) == 1
    assert mine[0][0] is not calls[0][0]          # its own model, not the merger's VLM
    assert res["rows"]["evolved (the exported VLM), images shuffled"]["In-the-Wild (world)"] == 10.0 * len(calls)


def test_vqa_report_refuses_a_recipe_and_an_export_at_once(capsys):
    with pytest.raises(SystemExit):
        report.main(["--target", "vqa", "--recipe", "r.yaml", "--exported", "m"])
    assert "--recipe and --exported both name the evolved VLM" in capsys.readouterr().err
