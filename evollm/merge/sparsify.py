"""Sparsification of task vectors: which entries of a delta survive, and how the survivors
are rescaled. Pure tensor functions; randomness only through an explicit generator.

Semantics follow mergekit 0.1.5 (`mergekit/sparsify.py`), with two additions:
- the top-k / outlier selections find their cut with a k-th value selection instead of a full
  sort: the same set whenever magnitudes are distinct; entries of equal magnitude at the cut
  are taken as a stable ascending sort orders them (mergekit's unstable sort leaves it open);
- random drops draw ``uniform < p`` from the given generator (a Bernoulli(p) mask, faster
  than ``torch.bernoulli`` on CPU);
- besides mergekit's L1-norm rescale, the DARE paper's convention (divide each kept entry by
  its keep probability) is available as ``rescale="density"``.
"""

from __future__ import annotations

from typing import Optional

import torch

#: Rescale conventions after a random drop. ``"l1"`` (mergekit >= 0.1.0, our default where
#: mergekit's ``rescale: true``): scale the kept vector so its L1 norm equals the original's.
#: ``"density"`` (DARE paper): divide each kept entry by its keep probability. ``None``: keep
#: the surviving entries as they are.
RESCALE_MODES = ("l1", "density", None)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """CPU float16 lacks some kernels (bernoulli, sort); mergekit upcasts there too."""
    if t.device.type != "cpu" or t.dtype in (torch.bfloat16, torch.float32, torch.float64):
        return t.dtype
    return torch.float32


def l1_rescaled(t: torch.Tensor, mask: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``t * mask`` scaled so its L1 norm equals ``t``'s (unchanged when either is ~0)."""
    masked = t * mask
    before = t.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _apply_mask(t: torch.Tensor, mask: torch.Tensor, rescale: Optional[str],
                keep_prob=None) -> torch.Tensor:
    if rescale is None:
        return t * mask
    if rescale == "l1":
        return l1_rescaled(t, mask)
    if rescale == "density":
        if keep_prob is None:
            raise ValueError("rescale='density' applies only to random drops (dare_*, della*)")
        return t * mask / keep_prob
    raise ValueError(f"unknown rescale mode {rescale!r}; expected one of {RESCALE_MODES}")


def rank_mask(w: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Boolean mask of the k largest (or smallest) entries of the flat tensor ``w``: the last
    (or first) k positions of a stable ascending sort of ``w``, found without sorting."""
    n = w.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=w.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=w.device)
    thr = torch.kthvalue(w, n - k + 1 if largest else k).values
    mask = w >= thr if largest else w <= thr
    excess = int(mask.sum()) - k          # > 0 only when several entries equal the cut value
    if excess > 0:
        at_cut = (w == thr).nonzero().squeeze(1)
        mask[at_cut[:excess] if largest else at_cut[-excess:]] = False
    return mask


def magnitude(t: torch.Tensor, density: float, rescale: Optional[str] = None) -> torch.Tensor:
    """TIES trim: keep the k = max(1, int(density * numel)) entries of largest magnitude."""
    if density >= 1:
        return t
    if density <= 0 or t.numel() == 0:
        return torch.zeros_like(t)
    k = max(1, int(density * t.numel()))
    w = t.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    mask = rank_mask(w, k, largest=True).to(t.dtype)
    return _apply_mask(t, mask.reshape_as(t), rescale)


def magnitude_outliers(t: torch.Tensor, density: float, gamma: float = 0.01,
                       rescale: Optional[str] = None) -> torch.Tensor:
    """Model Breadcrumbs: drop the ``gamma`` largest-magnitude entries (the outliers) and the
    smallest ones, keeping int(density * numel) entries. If the two cuts overlap, fewer
    outliers are dropped so the kept count is always met (as in mergekit)."""
    if density >= 1:
        return t
    n = t.numel()
    target = int(density * n)
    n_bottom = max(0, n - target - int(gamma * n))
    n_top = n - n_bottom - target
    w = t.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    drop = rank_mask(w, n_top, largest=True) | rank_mask(w, n_bottom, largest=False)
    return _apply_mask(t, (~drop).to(t.dtype).reshape_as(t), rescale)


def bernoulli(t: torch.Tensor, density: float, generator: torch.Generator,
              rescale: Optional[str] = "l1") -> torch.Tensor:
    """DARE drop: keep each entry independently with probability ``density``."""
    if density >= 1:
        return t
    if density <= 0:
        return torch.zeros_like(t)
    work = _work_dtype(t)
    mask = (torch.rand(t.shape, generator=generator, device=t.device) < density).to(work)
    return _apply_mask(t.to(work), mask, rescale, keep_prob=density).to(t.dtype)


def della_magprune(t: torch.Tensor, density: float, epsilon: float, generator: torch.Generator,
                   rescale: Optional[str] = "l1") -> torch.Tensor:
    """DELLA MagPrune: keep probabilities rise linearly with magnitude rank along dim 1 (rows
    of a matrix; a vector is one row), from density - epsilon (smallest) to density + epsilon
    (largest), then drop at random with those probabilities."""
    if density >= 1:
        return t
    if density <= 0:
        return torch.zeros_like(t)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"della needs density +/- epsilon inside (0, 1); got density={density}, epsilon={epsilon}")
    work = _work_dtype(t)
    shape = t.shape
    x = t.to(work)
    if x.dim() < 2:
        x = x.unsqueeze(0)
    n = x.shape[1]
    order = torch.argsort(x.abs(), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=x.device).expand_as(order))
    # (rank - min) / (max - min) with ranks 0..n-1; a single column has no spread -> 0
    rank_norm = ranks.to(work) / (n - 1) if n > 1 else torch.zeros_like(x)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    mask = (torch.rand(probs.shape, generator=generator, device=x.device) < probs).to(work)
    out = _apply_mask(x, mask, rescale, keep_prob=probs)
    return out.to(t.dtype).reshape(shape)
