"""Evaluation protocols, one file per benchmark: `mgsm_ja` (MGSM-ja: official, improved) and `ja_vqa`
(the Japanese VQA benchmarks: official). Each file holds every constant of its protocols. A task's
protocols are found here by name; `DEFAULT` is the one a run config gets when it names none (the world's
VQA protocol, `world`, lives with the world)."""

from __future__ import annotations

import importlib

PROTOCOLS = {
    "ja-math": {"official": "evollm.protocols.mgsm_ja:OFFICIAL", "improved": "evollm.protocols.mgsm_ja:IMPROVED"},
    "ja-vqa": {"official": "evollm.protocols.ja_vqa:OFFICIAL", "world": "evollm.world.formats:WORLD_VQA"},
}
DEFAULT = {"ja-math": "improved", "ja-vqa": "official"}


def get(task: str, name: str | None = None):
    """The protocol `name` (default: the task's default) of `task`; an unknown one is an error naming both."""
    known = PROTOCOLS.get(task)
    if known is None:
        raise ValueError(f"task {task!r} has no protocols; tasks with protocols: {', '.join(PROTOCOLS)}")
    name = name or DEFAULT[task]
    if name not in known:
        raise ValueError(f"unknown protocol {name!r} for {task}; known: {', '.join(known)}")
    module, attr = known[name].split(":")
    return getattr(importlib.import_module(module), attr)
