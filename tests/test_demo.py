"""The demo's toy tasks and recipes (the demo itself runs as `make demo`)."""

import torch

from evollm import demo
from evollm.recipe import parse_recipe


def test_toy_tasks_are_what_the_demo_says():
    g = torch.Generator().manual_seed(0)
    for task in (demo.COPY, demo.DEC, demo.SHIFT, demo.ROTATE):
        seq = demo.batch(task, 4, g)
        x, y = seq[:, 2:2 + demo.LENGTH], seq[:, 3 + demo.LENGTH:]
        assert (seq[:, 0] == demo.BOS).all() and (seq[:, 1] == task).all()
        assert (seq[:, 2 + demo.LENGTH] == demo.SEP).all()
        if task == demo.COPY:
            assert torch.equal(x, y) and (x < demo.FIRST + demo.N_SYMBOLS // 2).all()
        if task == demo.DEC:
            assert torch.equal((y - demo.FIRST + 1) % demo.N_SYMBOLS, x - demo.FIRST)
            assert (x >= demo.FIRST + demo.N_SYMBOLS // 2).all()
        if task == demo.ROTATE:
            assert torch.equal(y[:, 1:], x[:, :-1])


def test_demo_recipes_are_valid():
    paths = {"base": "b", "copy": "c", "dec": "d"}
    methods = {parse_recipe(r).merge_method for r in demo.recipes(paths).values()}
    assert {"linear", "ties", "dare_ties", "slerp", "model_stock"} <= methods
