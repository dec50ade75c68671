"""Named plug-ins found by name: the core's own, and those a front end declares.

A front end (evovlm, the miniature world) never gets imported by the core: it declares what it adds
as Python entry points in its package metadata (`[project.entry-points."evollm.tasks"]` and so on),
which the core reads when a name is asked for; `register` adds one at run time (tests, notebooks).
"""

from __future__ import annotations

import importlib
from importlib import metadata


class Registry:
    """name -> "module:attribute" (imported on first use) or the object itself."""

    def __init__(self, group: str, what: str, builtin: dict):
        self.group, self.what, self._entries = group, what, dict(builtin)

    def register(self, name: str, target) -> None:
        self._entries[name] = target

    def _all(self) -> dict:
        """Built-in and registered names first (in their order), then the entry points'."""
        found = {ep.name: ep.value for ep in metadata.entry_points(group=self.group)}
        return {**self._entries, **{k: v for k, v in found.items() if k not in self._entries}}

    def names(self) -> list:
        return list(self._all())

    def __contains__(self, name) -> bool:
        return name in self._all()

    def get(self, name: str):
        target = self._all().get(name)
        if target is None:
            raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(self.names()) or 'none'} "
                           f"(front ends add theirs through the `{self.group}` entry points when installed)")
        if isinstance(target, str):
            module, attr = target.split(":")
            target = getattr(importlib.import_module(module), attr)
        return target
