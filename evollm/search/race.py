"""Racing fitness (`task.fitness.schedule`): a generation's candidates scored on blocks of items, the
ones that cannot be among the optimizer's selection stopped early.

The fitness items are taken in one fixed order (a permutation seeded by the run seed) and cut into
blocks of `block` items. After each block, every candidate still running has a mean score p over the n
items it has seen (the task's score / 100, in [0, 1]) and a confidence interval for its mean over all N
items: the Chernoff bound with the Bernoulli KL divergence, valid for any scores in [0, 1] and for
sampling without replacement (Hoeffding 1963), at level delta = (1 - confidence) / (candidates x
blocks), so that with probability >= `confidence` every interval of the generation holds at every block.
A candidate stops when its upper bound is below the `select`-th largest lower bound of the generation:
then at least `select` candidates are better, and it is not one the optimizer selects (with `tolerance`
T score points: below that bound + T, i.e. it may be selected in truth but by less than T points, a
difference the user declared too small to pay for; this is what stops candidates tied near zero). The
`select` candidates with the largest lower bounds never stop. The others go
on, so the candidates the optimizer selects (and the generation's best) are scored on every item; only
a candidate scored on every item can become the run's best, so the best fitness stays exact. The
optimizer is told every candidate's mean over the items it saw.

Scores are combined over blocks as item-weighted means: exactly the whole split's score for tasks whose
score is a mean over items (ja-math's accuracy and rates); for ja-vqa's bootstrap ROUGE-L, close to it.
"""

from __future__ import annotations

import math

import numpy as np


def kl(p: float, q: float) -> float:
    """KL divergence between Bernoulli(p) and Bernoulli(q)."""
    eps = 1e-12
    q = min(max(q, eps), 1 - eps)
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


def bounds(p: float, n: int, total: int, delta: float) -> tuple:
    """(lower, upper) confidence bounds for the mean over `total` items, from mean `p` of `n` of them."""
    if n >= total:
        return p, p
    level = math.log(1 / delta) / n

    def search(lo, hi, up):
        for _ in range(60):                      # bisection to ~1e-18
            mid = (lo + hi) / 2
            if (kl(p, mid) <= level) == up:
                lo = mid
            else:
                hi = mid
        return lo if up else hi
    return search(0.0, p, False) if p > 0 else 0.0, search(p, 1.0, True) if p < 1 else 1.0


def blocks(n_items: int, block: int, seed: int) -> list:
    """The fitness items' indices in the run's fixed order, cut into blocks."""
    order = np.random.RandomState(seed).permutation(n_items).tolist()
    return [order[i:i + block] for i in range(0, n_items, block)]


def combine(parts: list) -> dict:
    """One record from a candidate's block records: item-weighted means of the scores, sums of items,
    tokens and seconds, the first error."""
    out = {"merge_s": 0.0, "eval_s": 0.0, "error": None, "items": 0, "tokens": 0}
    means = {}
    for r in parts:
        if r["error"]:
            return {**r, "items": out["items"] + r.get("items", 0), "score": None}
        out["items"] += r["items"]
        for k in ("merge_s", "eval_s", "tokens"):
            out[k] += r[k]
        for k, v in r.items():
            if k not in out and isinstance(v, (int, float)) and not isinstance(v, bool):
                means[k] = means.get(k, 0.0) + v * r["items"]
    out.update({k: v / out["items"] for k, v in means.items()})
    for k in ("merge_s", "eval_s"):
        out[k] = round(out[k], 3)
    return out


def race(evaluate, jobs: list, n_items: int, schedule, select: int, seed: int, log=None) -> list:
    """Score `jobs` ([(index, params)]) by racing; `evaluate` is a pool's (jobs with item lists -> records
    in order). Returns one record per job (each with `items`: how many it was scored on)."""
    parts = [[] for _ in jobs]
    live = list(range(len(jobs)))
    plan = blocks(n_items, schedule.block, seed)
    delta = (1 - schedule.confidence) / (len(jobs) * len(plan))
    lower, upper = [None] * len(jobs), [None] * len(jobs)
    for items in plan:
        if not live:
            break
        results = evaluate([(jobs[i][0], jobs[i][1], items) for i in live])
        for i, rec in zip(list(live), results):
            parts[i].append(rec)
            if rec["error"]:
                live.remove(i)
                continue
            r = combine(parts[i])
            p = min(max(r["score"] / 100, 0.0), 1.0)
            lower[i], upper[i] = bounds(p, r["items"], n_items, delta)
        ranked = sorted((i for i in range(len(jobs)) if lower[i] is not None and not parts[i][-1]["error"]),
                        key=lambda i: (-lower[i], i))
        if len(ranked) >= select:
            bar = lower[ranked[select - 1]] + schedule.tolerance / 100
            lead = set(ranked[:select])             # the current top never stops (tolerance could stop it)
            live = [i for i in live if i in lead or upper[i] >= bar]
    return [combine(p) for p in parts]
