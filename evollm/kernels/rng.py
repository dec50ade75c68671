"""Seeded generators for random masks (DARE, DELLA).

Each (run seed, candidate, tensor, input) gets its own generator (the input: the source's position
among the merge's inputs) whose seed is a hash of those four, so a mask never depends on the global
RNG, on the order tensors are merged in, or on what else ran before: the same recipe and seed give
bit-identical output on the same device type.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def tensor_generator(seed: int, tensor: str, model: str, device="cpu", candidate: int = 0) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, candidate, tensor, model))
    return g
