"""Fitness/benchmark tasks. A task turns a config's data specs into rows and scores a model on rows
(higher is better); see `mgsm.JaMath` for the interface. Registered by name, imported on use."""

TASKS = {"ja-math": "evollm.tasks.mgsm:JaMath", "ja-vqa": "evovlm.tasks:JaVqa"}


def task_class(name: str):
    import importlib
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
