"""Fitness/benchmark tasks. A task turns a config's data specs into rows and scores a model on rows
(higher is better); see `mgsm.JaMath` for the interface. The core holds `ja-math`; front ends add
theirs through the `evollm.tasks` entry points (evovlm: `ja-vqa`)."""

from ..registry import Registry

TASKS = Registry("evollm.tasks", "task", {"ja-math": "evollm.tasks.mgsm:JaMath"})


def task_class(name: str):
    return TASKS.get(name)
