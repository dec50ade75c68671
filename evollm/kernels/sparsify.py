"""Sparsification of task vectors: which entries of a delta survive, and how the survivors
are rescaled. Pure tensor functions; randomness only through an explicit counter-based stream
(`evollm.kernels.rng.MaskStream`).

Semantics follow mergekit 0.1.5 (`mergekit/sparsify.py`), with three additions:
- the top-k / outlier selections find their cut with a k-th value selection instead of a full
  sort: the same set whenever magnitudes are distinct; entries of equal magnitude at the cut
  are taken as a stable ascending sort orders them (mergekit's unstable sort leaves it open);
- random drops keep an entry when its counter-based hash is below ``p * 2^32`` (a Bernoulli(p)
  mask that depends only on seed, tensor, input and the entry's index: the same on every device
  and in every order; mergekit draws from the global torch RNG);
- besides mergekit's L1-norm rescale, the DARE paper's convention (divide each kept entry by
  its keep probability) is available as ``rescale="density"``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .rng import MaskStream

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
    """``t`` where the boolean ``mask`` holds (0 elsewhere), scaled so its L1 norm equals
    ``t``'s (unchanged when either norm is ~0)."""
    masked = torch.where(mask, t, 0)
    before = torch.linalg.vector_norm(t, ord=1)
    after = torch.linalg.vector_norm(masked, ord=1)
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def _apply_mask(t: torch.Tensor, mask: torch.Tensor, rescale: Optional[str],
                keep_prob=None) -> torch.Tensor:
    """Keep the entries of ``t`` where the boolean ``mask`` holds, then rescale."""
    if rescale is None:
        return torch.where(mask, t, 0)
    if rescale == "l1":
        return l1_rescaled(t, mask)
    if rescale == "density":
        if keep_prob is None:
            raise ValueError("rescale='density' applies only to random drops (dare_*, della*)")
        return torch.where(mask, t, 0).div_(keep_prob)
    raise ValueError(f"unknown rescale mode {rescale!r}; expected one of {RESCALE_MODES}")


_SAMPLE = 1 << 16


def kth_smallest(w: torch.Tensor, j: int) -> torch.Tensor:
    """Exact j-th smallest value (1-based) of the flat tensor ``w``.

    ``torch.kthvalue`` is a single-threaded quickselect over the whole tensor; on large tensors
    this first brackets the answer between two quantiles of a fixed-seed sample, counts what
    lies below the bracket (vectorised passes), and selects only among the entries inside it.
    The counts prove the answer is inside; if the bracket misses, it falls back to the full
    selection, so the result is always exact."""
    n = w.numel()
    if n <= 8 * _SAMPLE:
        return torch.kthvalue(w, j).values
    g = torch.Generator(device=w.device).manual_seed(n)
    sample = w[torch.randint(n, (_SAMPLE,), generator=g, device=w.device)].sort().values
    q = j / n
    margin = 6 * (q * (1 - q) / _SAMPLE) ** 0.5 + 2 / _SAMPLE
    lo = sample[max(0, int((q - margin) * _SAMPLE))]
    hi = sample[min(_SAMPLE - 1, int((q + margin) * _SAMPLE))]
    below = int(torch.count_nonzero(w < lo))
    inside = w[(w >= lo) & (w <= hi)]
    if below < j <= below + inside.numel():
        return torch.kthvalue(inside, j - below).values
    return torch.kthvalue(w, j).values


def rank_mask(w: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Boolean mask of the k largest (or smallest) entries of the flat tensor ``w``: the last
    (or first) k positions of a stable ascending sort of ``w``, found without sorting."""
    n = w.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=w.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=w.device)
    thr = kth_smallest(w, n - k + 1 if largest else k)
    mask = w >= thr if largest else w <= thr
    excess = int(torch.count_nonzero(mask)) - k          # > 0 only when several entries equal the cut value
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
    return _apply_mask(t, rank_mask(w, k, largest=True).reshape(t.shape), rescale)


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
    return _apply_mask(t, (~drop).reshape(t.shape), rescale)


def bernoulli(t: torch.Tensor, density: float, stream: MaskStream,
              rescale: Optional[str] = "l1") -> torch.Tensor:
    """DARE drop: keep each entry independently with probability ``density`` (the mask of ``stream``)."""
    if density >= 1:
        return t
    if density <= 0:
        return torch.zeros_like(t)
    work = _work_dtype(t)
    mask = stream.mask(t.shape, density, t.device)
    return _apply_mask(t.to(work), mask, rescale, keep_prob=density).to(t.dtype)


def della_magprune(t: torch.Tensor, density: float, epsilon: float, stream: MaskStream,
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
    # keep probability of each rank r = 0..n-1: (density - eps) + r / (n - 1) * 2 eps (a row
    # of one column has no spread: density - eps), scattered to where each rank sits
    rank_norm = torch.arange(n, device=x.device, dtype=work) / (n - 1) if n > 1 else torch.zeros(1, dtype=work, device=x.device)
    by_rank = (density - epsilon) + rank_norm * (2 * epsilon)
    probs = torch.empty(x.shape, dtype=work, device=x.device).scatter_(1, order, by_rank.expand_as(order))
    mask = stream.mask(probs.shape, probs, x.device)
    out = _apply_mask(x, mask, rescale, keep_prob=probs)
    return out.to(t.dtype).reshape(shape)
