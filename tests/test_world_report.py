"""The world report's baselines and its CMA-ES search (seeded, bounded, improving)."""

import numpy as np
import pytest

from evollm.tasks import mgsm
from evollm.world import report


def test_baselines_use_the_fitness_mode_and_the_test_range():
    fit = [{"answer_number": a} for a in (3, 3, 5)]
    test = [{"answer_number": a} for a in (3, 4, 6, 7)]
    b = mgsm.answer_baselines(fit, test)
    assert (b["constant"], b["constant_answer"]) == (25.0, 3) and b["chance"] == pytest.approx(100 / 5)
    assert b["constant_fitness"] == pytest.approx(200 / 3)


def test_cma_search_is_seeded_bounded_and_finds_the_optimum():
    def score(per, n):
        return -sum((p["weight"] - 1.2) ** 2 + (p["density"] - 0.3) ** 2 for p in per.values())

    a = report.cma_search(score, ["x", "y"], budget=96, seed=3, weight_max=2.0, log=lambda *_: None)
    b = report.cma_search(score, ["x", "y"], budget=96, seed=3, weight_max=2.0, log=lambda *_: None)
    assert a == b
    for p in a[1].values():
        assert 0 <= p["weight"] <= 2 and 0.05 <= p["density"] <= 1
        assert abs(p["weight"] - 1.2) < 0.15 and abs(p["density"] - 0.3) < 0.1


def test_cma_search_over_layer_groups():
    seen = []

    def score(per, n):
        seen.append(per)
        w = per["x"]["weight"]
        return -((w[0] - 0.2) ** 2 + (w[3] - 0.9) ** 2)

    best, per = report.cma_search(score, ["x"], budget=64, seed=0, layer_groups=2, n_layers=4, log=lambda *_: None)
    assert all(isinstance(p["x"]["weight"], list) and len(p["x"]["weight"]) == 4 for p in seen)
    assert all(w[0] == w[1] and w[2] == w[3] for p in seen for w in [p["x"]["weight"]])
    assert all(0 <= v <= 1 for p in seen for v in p["x"]["weight"])          # the default bound: [0, 1]
    assert abs(per["x"]["weight"][0] - 0.2) < 0.1 and abs(per["x"]["weight"][2] - 0.9) < 0.1


def test_vqa_grid_merges_the_tower_and_scores_both_splits():
    """The lab notebook's VQA probe: at (vlm-en 1, ja 0) the merged tower is vlm-en's own, so it scores
    what the VLM scores unmerged."""
    from pathlib import Path
    from evovlm.data import load_ja_vg_vqa
    from evollm.world.vlm import evaluate_vqa, load_vlm
    assets = Path(__file__).resolve().parents[1] / "assets"
    res = report.vqa_grid(assets, items=3, points=((1, 0), (0, 1)), log=lambda *_: None)
    assert set(res) == {"1/0", "0/1"} and all(0 <= r[s] <= 100 for r in res.values() for s in ("fit", "test"))
    vlm, proc = load_vlm(assets / "models" / "vlm-en")
    test = load_ja_vg_vqa(str(assets / "data" / "ja-vg-vqa-500" / "test.parquet")).select(range(3))
    plain = evaluate_vqa(vlm, proc, test, max_new_tokens=24)
    assert res["1/0"]["test_predictions"] == plain["predictions"] != res["0/1"]["test_predictions"]
    assert res["1/0"]["test"] == round(plain["rouge_l"], 1)


def test_mgsm_grid_at_a_single_source_scores_that_source():
    """The lab notebook's fine-tune probe: at (ja 0, math-a 1) the merge is math-a itself."""
    from pathlib import Path
    assets = Path(__file__).resolve().parents[1] / "assets"
    res = report.mgsm_grid(assets, items=8, points=((0, 1), (1, 0)), log=lambda *_: None)
    tok, sd, model = report.load_world(assets)
    fit = report.read_rows(assets / "data" / "mgsm-ja" / "fitness.jsonl")
    sub = [fit[i] for i in sorted(np.random.RandomState(1).choice(len(fit), 8, replace=False))]
    model.load_state_dict(sd["math-a"])
    r = mgsm.evaluate(model, tok, sub, max_new_tokens=48, batch_size=256)
    assert res["grid"]["0/1"] == {k: round(v, 1) for k, v in r.items() if k not in ("items", "protocol")}
    assert res["grid"]["0/1"]["lang_rate"] == 0 < res["grid"]["1/0"]["lang_rate"]
    assert set(res["untuned"]) == {"task arithmetic 1/1/1", "TIES d=0.5", "DARE-TIES d=0.5"}
