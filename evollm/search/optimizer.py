"""Optimizers behind one small ask/tell interface; everything else (evaluation, logging, resume)
stays outside them. An optimizer maximises; its whole state, RNG included, pickles, so a run
restored from a checkpoint asks for exactly the candidates the uninterrupted run would have.

To add a strategy (say, a multi-objective one), subclass `Optimizer` and register it in `make`.
"""

from __future__ import annotations

import numpy as np


class Optimizer:
    """Candidates are genomes in the unit box [0, 1]^dim."""

    def ask(self) -> list:
        """The next generation's genomes."""
        raise NotImplementedError

    def tell(self, genomes: list, scores: list) -> None:
        """Scores (higher is better, all finite) for the genomes of the last `ask`, in order."""
        raise NotImplementedError


class CMA(Optimizer):
    """pycma's CMA-ES with an explicit seeded RNG (its `randn` option) and box bounds [0, 1]."""

    def __init__(self, x0, sigma: float, popsize: int, seed: int):
        import cma
        self.es = cma.CMAEvolutionStrategy(list(x0), sigma, {
            "popsize": popsize, "seed": seed + 1, "randn": np.random.RandomState(seed).randn,
            "bounds": [0, 1], "verbose": -9, "tolfun": 0, "tolflatfitness": 10**9, "tolx": 0,
            "tolstagnation": 10**9, "tolfunhist": 0})

    def ask(self):
        return [np.clip(np.asarray(x, dtype=float), 0.0, 1.0) for x in self.es.ask()]

    def tell(self, genomes, scores):
        self.es.tell([np.asarray(g) for g in genomes], [-float(s) for s in scores])


class RandomSearch(Optimizer):
    """Uniform samples in the box (the first generation starts with the initial point): a baseline
    any evolved result should beat."""

    def __init__(self, x0, sigma: float, popsize: int, seed: int):
        self.x0, self.popsize, self.rng, self.first = np.asarray(x0, float), popsize, np.random.RandomState(seed), True

    def ask(self):
        xs = [self.rng.uniform(0, 1, len(self.x0)) for _ in range(self.popsize)]
        if self.first:
            xs[0], self.first = self.x0.copy(), False
        return xs

    def tell(self, genomes, scores):
        pass


OPTIMIZERS = {"cma": CMA, "random": RandomSearch}


def make(name: str, x0, sigma: float, popsize: int, seed: int) -> Optimizer:
    return OPTIMIZERS[name](x0, sigma, popsize, seed)
