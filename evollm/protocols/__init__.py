"""Evaluation protocols, one file per benchmark: `mgsm_ja` (MGSM-ja: official, improved) and `ja_vqa`
(the Japanese VQA benchmarks: official). Each file holds every constant of its protocols. A protocol
is registered as "<task>/<name>"; front ends add theirs through the `evollm.protocols` entry points
(the miniature world: `ja-vqa/world`). `DEFAULT` is the one a run config gets when it names none."""

from __future__ import annotations

from ..registry import Registry

PROTOCOLS = Registry("evollm.protocols", "protocol", {
    "ja-math/official": "evollm.protocols.mgsm_ja:OFFICIAL", "ja-math/improved": "evollm.protocols.mgsm_ja:IMPROVED",
    "ja-vqa/official": "evollm.protocols.ja_vqa:OFFICIAL"})
DEFAULT = {"ja-math": "improved", "ja-vqa": "official"}


def names(task: str) -> list:
    """The protocol names registered for `task`."""
    return [n.split("/", 1)[1] for n in PROTOCOLS.names() if n.split("/", 1)[0] == task]


def get(task: str, name: str | None = None):
    """The protocol `name` (default: the task's default) of `task`; an unknown one is an error naming both."""
    known = names(task)
    if not known:
        raise ValueError(f"task {task!r} has no protocols; tasks with protocols: {', '.join(DEFAULT)}")
    name = name or DEFAULT[task]
    if name not in known:
        raise ValueError(f"unknown protocol {name!r} for {task}; known: {', '.join(known)}")
    return PROTOCOLS.get(f"{task}/{name}")
