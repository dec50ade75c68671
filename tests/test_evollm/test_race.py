"""Racing fitness (evollm.search.race) on synthetic candidates with known per-item results: the bounds,
the rule (the truly best candidates are never stopped early at the configured confidence), the savings,
determinism and failures; then a real run with a schedule, interrupted mid-generation and resumed."""

import math

import numpy as np
import pytest

from evollm.search.config import Schedule
from evollm.search.race import blocks, bounds, combine, race

N = 200


def synthetic(accuracies, seed):
    """Per-item 0/1 results of candidates with these true rates, and a pool-like `evaluate`."""
    rng = np.random.RandomState(seed)
    items = [rng.rand(N) < a for a in accuracies]
    calls = []

    def evaluate(jobs):
        for index, params, idx in jobs:
            calls.append((index, len(idx)))
            hits = items[params["i"]][idx]
            yield {"merge_s": 0.01, "eval_s": 0.1, "error": None, "items": len(idx), "tokens": 10 * len(idx),
                   "score": 100 * hits.mean(), "lang_rate": 50.0}
    return items, evaluate, calls


def test_bounds_hold_the_mean_and_close_on_the_whole_split():
    lo, hi = bounds(0.0, 25, N, 0.01)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.01 ** (1 / 25), abs=1e-9)    # KL(0 || q) = -ln(1 - q)
    lo, hi = bounds(0.3, 50, N, 0.01)
    assert lo < 0.3 < hi and 50 * (0.3 * math.log(0.3 / hi) + 0.7 * math.log(0.7 / (1 - hi))) == pytest.approx(
        math.log(100), rel=1e-6)
    assert bounds(0.3, 100, N, 0.01)[1] < hi                         # more items, a tighter interval
    assert bounds(0.42, N, N, 0.01) == (0.42, 0.42)


def test_blocks_are_one_seeded_order_of_every_item():
    b = blocks(N, 25, 3)
    assert len(b) == 8 and sorted(sum(b, [])) == list(range(N)) and b == blocks(N, 25, 3) and b != blocks(N, 25, 4)
    assert [len(x) for x in blocks(10, 4, 0)] == [4, 4, 2]


def test_combine_weights_scores_by_items_and_sums_costs():
    r = combine([{"merge_s": 0.1, "eval_s": 1.0, "error": None, "items": 10, "tokens": 100, "score": 10.0},
                 {"merge_s": 0.1, "eval_s": 3.0, "error": None, "items": 30, "tokens": 200, "score": 50.0}])
    assert r["score"] == 40.0 and r["items"] == 40 and r["tokens"] == 300 and r["eval_s"] == 4.0


@pytest.mark.parametrize("select", [1, 4])
def test_the_truly_best_candidates_are_never_stopped_early(select):
    """200 generations of 8 candidates with random true rates: the `select` best by their full-split
    score always run to the end (confidence 0.95), and racing saves items on the others."""
    rng = np.random.RandomState(0)
    sch = Schedule(block=25, confidence=0.95, select=None)
    stopped_early, used = 0, 0
    for g in range(200):
        acc = rng.uniform(0, 0.6, 8)
        items, evaluate, _ = synthetic(acc, g)
        recs = race(evaluate, [(k, {"i": k}) for k in range(8)], N, sch, select, seed=g)
        full = [100 * x.mean() for x in items]
        top = np.argsort(full)[::-1][:select]
        assert all(recs[k]["items"] == N and recs[k]["score"] == pytest.approx(full[k]) for k in top), (g, acc)
        stopped_early += sum(r["items"] < N for r in recs)
        used += sum(r["items"] for r in recs)
        for r, f in zip(recs, full):            # a stopped candidate's score is its mean on the items it saw
            assert r["items"] < N or r["score"] == pytest.approx(f)
    assert stopped_early > 0 and used < 200 * 8 * N * (0.95 if select == 4 else 0.8)


def test_a_tolerance_stops_candidates_tied_near_zero():
    sch = Schedule(block=25, confidence=0.9, select=None)
    acc = [0.0] * 6 + [0.02, 0.01]
    strict = race(synthetic(acc, 1)[1], [(k, {"i": k}) for k in range(8)], N, sch, 4, seed=1)
    assert all(r["items"] == N for r in strict)                 # nothing can be told apart: all scored fully
    loose = race(synthetic(acc, 1)[1], [(k, {"i": k}) for k in range(8)], N,
                 Schedule(block=25, confidence=0.9, select=None, tolerance=10), 4, seed=1)
    assert sum(r["items"] < N for r in loose) == 4              # all but the 4 leading ones, which never stop


def test_racing_is_deterministic_and_a_failed_block_fails_the_candidate():
    sch = Schedule(block=20, confidence=0.95, select=None)
    acc = [0.1, 0.2, 0.5, 0.55]
    runs = []
    for _ in range(2):
        _, evaluate, calls = synthetic(acc, 7)
        runs.append((race(evaluate, [(k, {"i": k}) for k in range(4)], N, sch, 2, seed=7), calls))
    assert runs[0] == runs[1]
    _, evaluate, _ = synthetic(acc, 7)

    def failing(jobs):
        for job, rec in zip(jobs, evaluate(jobs)):
            yield {**rec, "score": None, "error": "RuntimeError: boom"} if job[0] == 1 and job[2] != blocks(N, 20, 7)[0] \
                else rec
    recs = race(failing, [(k, {"i": k}) for k in range(4)], N, sch, 2, seed=7)
    assert recs[1]["score"] is None and recs[1]["error"] == "RuntimeError: boom" and recs[1]["items"] == 40


@pytest.mark.slow
def test_a_raced_run_is_exact_where_it_matters_and_resumes_mid_generation(tmp_path, monkeypatch):
    """The world's run with a schedule: raced-out candidates log fewer items, the best was scored on
    every item (its fitness is the exported model's), and a run interrupted in the middle of a
    generation's race resumes to the same candidates."""
    import dataclasses
    import json

    from helpers import small

    from evollm.search import pool as pool_mod
    from evollm.search.run import read_candidates, run
    c = small(tmp_path, "world-ja-math", budget=16, popsize=8, items=40, max_new_tokens=48,
              report={"sources": False, "baselines": False})
    sch = Schedule(block=10, confidence=0.9, select=1, tolerance=30)
    c = dataclasses.replace(c, seed=3, task=dataclasses.replace(c.task, fitness=dataclasses.replace(
        c.task.fitness, schedule=sch)))
    quiet = dict(progress=False, log=lambda *a: None)
    data = run(c, tmp_path / "a", **quiet)
    ra = read_candidates(tmp_path / "a" / "candidates.jsonl")
    assert len(ra) == 16 and any(r["items"] < 40 for r in ra) and all(r["tokens"] > 0 for r in ra)
    best = data["best"]
    assert best["items"] == 40 and best["score"] == max(r["score"] for r in ra if r["items"] == 40)
    assert data["rows"]["evolved (best/model)"]["fitness"]["score"] == pytest.approx(best["score"])
    assert "Fitness cost (racing" in (tmp_path / "a" / "report.md").read_text()
    tm = json.loads((tmp_path / "a" / "report.json").read_text())["timing"]
    assert tm["items"] == sum(r["items"] for r in ra) < tm["full_items"] == 16 * 40

    real, calls = pool_mod.LocalPool.evaluate, []
    first = sum(-(-r["items"] // 10) for r in ra if r["generation"] == 1)       # block scorings of generation 1

    def evaluate(self, jobs):           # Ctrl-C in the second generation's race, after its first block
        for rec in real(self, jobs):
            calls.append(1)
            if len(calls) == first + 9:
                raise KeyboardInterrupt
            yield rec
    monkeypatch.setattr(pool_mod.LocalPool, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path / "b", **quiet)
    monkeypatch.setattr(pool_mod.LocalPool, "evaluate", real)
    assert len(read_candidates(tmp_path / "b" / "candidates.jsonl")) == 8        # generation 1 only
    run(c, tmp_path / "b", resume=True, **quiet)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("merge_s", "eval_s")} for r in rs]
    assert strip(read_candidates(tmp_path / "b" / "candidates.jsonl")) == strip(ra)
