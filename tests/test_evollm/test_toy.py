"""`make toy`: its toy tasks and recipes."""

import torch

from evollm import toy
from evollm.recipe import parse_recipe


def test_toy_tasks_are_what_the_demo_says():
    g = torch.Generator().manual_seed(0)
    for task in (toy.COPY, toy.DEC, toy.SHIFT, toy.ROTATE):
        seq = toy.batch(task, 4, g)
        x, y = seq[:, 2:2 + toy.LENGTH], seq[:, 3 + toy.LENGTH:]
        assert (seq[:, 0] == toy.BOS).all() and (seq[:, 1] == task).all()
        assert (seq[:, 2 + toy.LENGTH] == toy.SEP).all()
        if task == toy.COPY:
            assert torch.equal(x, y) and (x < toy.FIRST + toy.N_SYMBOLS // 2).all()
        if task == toy.DEC:
            assert torch.equal((y - toy.FIRST + 1) % toy.N_SYMBOLS, x - toy.FIRST)
            assert (x >= toy.FIRST + toy.N_SYMBOLS // 2).all()
        if task == toy.ROTATE:
            assert torch.equal(y[:, 1:], x[:, :-1])


def test_demo_recipes_are_valid():
    paths = {"base": "b", "copy": "c", "dec": "d"}
    methods = {parse_recipe(r).merge_method for r in toy.recipes(paths).values()}
    assert {"linear", "ties", "dare_ties", "slerp", "model_stock"} <= methods
