"""How sure is a VQA run's margin? For finished `evovlm merge` runs of one config (differing in seed),
score every reference model of the report (sources, towers, untuned merges) and each run's K best
candidates by fitness on the held-out test rows, and print per candidate its test score, its margin over
the best reference, and a paired bootstrap 95% interval of that margin (items resampled together).

    python benchmarks/vqa_margin.py RUN [RUN ...] [--top K] [--samples N] [--test DATA --max-new-tokens N]

`--test` scores another held-out set instead of the runs' test (e.g. the world's In-the-Wild questions, whose
long answers want `--max-new-tokens 64`, as the world report generates them).

Scores are ROUGE-L F x 100 with the language rule, the plain mean over items (the report's bootstrap mid
differs from it by a few hundredths). Each candidate is merged in memory with its run's seed, as the
search scored it, so its row is the score its export would get; the references (whose DARE merges draw masks
too) with the first run's seed. Used for attempts 19-20 (assets/README.md).
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from evollm.protocols.ja_vqa import item_scores, language_rule
from evollm.search import config as C
from evollm.search.pool import prepare
from evollm.search.runfolder import read_candidates


def per_item(bench, model, rows) -> np.ndarray:
    """ROUGE-L F per test item, x 100, the language rule applied."""
    preds = bench.task.predict(model, rows)
    refs = [r["answer"] for r in rows]
    return 100.0 * item_scores(language_rule(preds, refs), refs)["rougeL"][:, 2]


def interval(diff: np.ndarray, samples: int, seed: int = 0) -> tuple:
    rng = np.random.RandomState(seed)
    means = diff[rng.randint(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def top_candidates(run: Path, k: int, n_items: int) -> list:
    """The run's `k` best candidates scored on all `n_items` fitness items (as the search picks its best: a
    raced run's early drop-outs carry a score on fewer items, which ranks nothing)."""
    full = [r for r in read_candidates(run / "candidates.jsonl")
            if r["score"] is not None and r.get("items", n_items) == n_items]
    return sorted(full, key=lambda r: -r["score"])[:k]


def with_test(cfg, data, max_new_tokens):
    """`cfg` scoring `data` (a file or folder of either VQA benchmark's columns) as its test, with that many new
    tokens (None: the run's own)."""
    t = cfg.task
    if data is not None:
        t = dataclasses.replace(t, test=dataclasses.replace(t.test, data=str(data), split="test", limit=None))
    if max_new_tokens is not None:
        t = dataclasses.replace(t, max_new_tokens=max_new_tokens)
    return dataclasses.replace(cfg, task=t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--test", type=Path, help="a held-out VQA file to score instead of the runs' test")
    ap.add_argument("--max-new-tokens", type=int)
    a = ap.parse_args(argv)
    cfgs = [with_test(C.load_config(r / "config.yaml"), a.test, a.max_new_tokens) for r in a.runs]
    keys = {(c.base_model, tuple(m.model for m in c.models), c.task.fitness, c.task.test) for c in cfgs}
    if len(keys) > 1:
        raise SystemExit(f"{', '.join(map(str, a.runs))}: not runs of one experiment (models or data differ)")
    bench, fit, test, _ = prepare(cfgs[0], lambda *_: None)
    refs = {label: per_item(bench, make(), test) for label, make in bench.reference_models().items()}
    best_label = max(refs, key=lambda k: refs[k].mean())
    best = refs[best_label]
    print(f"{len(test)} test items; references: " + ", ".join(f"{k} {v.mean():.1f}" for k, v in refs.items()))
    print(f"margin over the best reference, {best_label} ({best.mean():.1f})\n")
    print("| run (seed) | candidate | fitness | test | margin | 95% interval |\n|---|---:|---:|---:|---:|---|")
    margins = []
    for run, cfg in zip(a.runs, cfgs):
        bench.seed = cfg.seed                     # DARE's masks are drawn from the run's seed
        for r in top_candidates(run, a.top, len(fit)):
            s = per_item(bench, bench.candidate(r["parameters"]), test)
            lo, hi = interval(s - best, a.samples)
            margins.append(s.mean() - best.mean())
            print(f"| {run.name} ({cfg.seed}) | #{r['index']} | {r['score']:.1f} | {s.mean():.1f} | "
                  f"{margins[-1]:+.1f} | {lo:+.1f} .. {hi:+.1f} |", flush=True)
    print(f"\nmargin over all {len(margins)} candidates: mean {np.mean(margins):+.1f}, "
          f"min {min(margins):+.1f}, max {max(margins):+.1f}")


if __name__ == "__main__":
    main()
