"""The world report's baselines and its CMA-ES search (seeded, bounded, improving)."""

import pytest

from evollm.world import report


def test_baselines_use_the_fitness_mode_and_the_test_range():
    fit = [{"answer_number": a} for a in (3, 3, 5)]
    test = [{"answer_number": a} for a in (3, 4, 6, 7)]
    b = report.baselines(fit, test)
    assert b["constant"] == (25.0, 3) and b["chance"] == pytest.approx(100 / 5)


def test_cma_search_is_seeded_bounded_and_finds_the_optimum():
    def score(per, n):
        return -sum((p["weight"] - 1.2) ** 2 + (p["density"] - 0.3) ** 2 for p in per.values())

    a = report.cma_search(score, ["x", "y"], budget=96, seed=3, log=lambda *_: None)
    b = report.cma_search(score, ["x", "y"], budget=96, seed=3, log=lambda *_: None)
    assert a == b
    for p in a[1].values():
        assert 0 <= p["weight"] <= 2 and 0.05 <= p["density"] <= 1
        assert abs(p["weight"] - 1.2) < 0.15 and abs(p["density"] - 0.3) < 0.1
