"""Independent, deliberately plain reference implementations (numpy, loops over entries) of
the merge semantics in docs/design.md (merge methods), to check the kernels against. The random
masks are recomputed here from their definition (Python integers, one entry at a time), not with
the kernels' torch code."""

import hashlib

import numpy as np


# --------------------------------------------------------------------------- counter-based masks


def mask_hash(seed, tensor, index, j, candidate=0):
    """The 32-bit hash of entry j (flat index) of input `index` of `tensor` (docs/design.md)."""
    block, lo = j >> 32, j % 2**32
    digest = hashlib.sha256(f"{seed}\x1f{candidate}\x1f{tensor}\x1f{index}\x1f{block}".encode()).digest()
    a = int.from_bytes(digest[0:4], "little") % 2**31 | 1
    b = int.from_bytes(digest[4:8], "little")
    x = (a * lo + b) % 2**32
    x ^= x >> 16
    x = x * 0x21F0AAAD % 2**32
    x ^= x >> 15
    x = x * 0x735A2D97 % 2**32
    x ^= x >> 15
    return x


def keep_mask(shape, p, seed, tensor, index):
    """Entry j kept when its uniform (hash >> 8) / 2^24 is below p (p a number or an array of the shape)."""
    n = int(np.prod(shape))
    probs = np.broadcast_to(np.asarray(p, dtype=np.float64), shape).reshape(-1)
    return np.array([(mask_hash(seed, tensor, index, j) >> 8) < probs[j] * 2**24 for j in range(n)],
                    dtype=bool).reshape(shape)


def _rescaled(d, kept, mask, rescale, probs):
    if rescale == "l1":
        before, after = np.abs(d).sum(), np.abs(kept).sum()
        return kept * (before / after) if before >= 1e-7 and after >= 1e-7 else kept
    if rescale == "density":
        return np.where(mask, d / probs, 0.0)
    return kept


def dare(d, density, seed, tensor, index, rescale="l1"):
    """DARE drop (and rescale) of one task vector."""
    if density >= 1:
        return d.copy()
    if density <= 0:
        return np.zeros_like(d)
    mask = keep_mask(d.shape, density, seed, tensor, index)
    return _rescaled(d, np.where(mask, d, 0.0), mask, rescale, density)


def della(d, density, epsilon, seed, tensor, index, rescale="l1"):
    """DELLA MagPrune: keep probability rising with the magnitude rank within each row."""
    x = d.reshape(1, -1) if d.ndim < 2 else d
    probs = np.empty_like(x, dtype=np.float64)
    n = x.shape[1]
    for r in range(x.shape[0]):
        order = sorted(range(n), key=lambda i: abs(x[r, i]))       # stable ascending
        for rank, i in enumerate(order):
            probs[r, i] = (density - epsilon) + (rank / (n - 1) if n > 1 else 0.0) * (2 * epsilon)
    probs = probs.reshape(d.shape)
    mask = keep_mask(d.shape, probs, seed, tensor, index)
    return _rescaled(d, np.where(mask, d, 0.0), mask, rescale, probs)


def trim_topk(d, density):
    """Keep the k = max(1, int(density * n)) largest-magnitude entries."""
    flat = d.reshape(-1)
    if density >= 1:
        return d.copy()
    if density <= 0:
        return np.zeros_like(d)
    k = max(1, int(density * flat.size))
    order = sorted(range(flat.size), key=lambda i: -abs(flat[i]))
    out = np.zeros_like(flat)
    for i in order[:k]:
        out[i] = flat[i]
    return out.reshape(d.shape)


def breadcrumbs_trim(d, density, gamma):
    flat = d.reshape(-1)
    if density >= 1:
        return d.copy()
    n = flat.size
    target = int(density * n)
    n_bottom = max(0, n - target - int(gamma * n))
    order = sorted(range(n), key=lambda i: abs(flat[i]))      # ascending
    out = np.zeros_like(flat)
    for i in order[n_bottom:n_bottom + target]:
        out[i] = flat[i]
    return out.reshape(d.shape)


def combine(base, deltas, weights, *, consensus, normalize, lam=1.0):
    """Weighted (optionally sign-elected) sum of already-sparsified task vectors."""
    shape = base.shape
    b = base.reshape(-1)
    ds = [d.reshape(-1) for d in deltas]
    out = np.empty_like(b)
    for e in range(b.size):
        D = [w * d[e] for w, d in zip(weights, ds)]
        if consensus:
            total = sum(D)
            sign = 1.0 if total >= 0 else -1.0
            kept = [(Di, w) for Di, w in zip(D, weights) if Di != 0 and np.sign(Di) == sign]
            merged = sum(Di for Di, _ in kept)
            div = sum(w for _, w in kept)
            div = 1.0 if div == 0 else div
        else:
            merged = sum(D)
            div = sum(weights)
            div = 1.0 if abs(div) < 1e-8 else div
        if normalize:
            merged = merged / div
        out[e] = b[e] + lam * merged
    return out.reshape(shape)


def ties(base, xs, weights, densities, normalize=True, lam=1.0):
    deltas = [trim_topk(x - base, dens) for x, dens in zip(xs, densities)]
    return combine(base, deltas, weights, consensus=True, normalize=normalize, lam=lam)


def slerp(t, a, b, threshold=0.9995):
    va, vb = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    cos = np.dot(va / np.linalg.norm(va), vb / np.linalg.norm(vb))
    if abs(cos) > threshold:
        return ((1 - t) * va + t * vb).reshape(a.shape)
    th = np.arccos(np.clip(cos, -1, 1))
    return ((np.sin((1 - t) * th) * va + np.sin(t * th) * vb) / np.sin(th)).reshape(a.shape)


def model_stock(base, xs):
    offs = [(x - base).reshape(-1) for x in xs]
    cos = []
    for i in range(len(offs)):
        for j in range(i + 1, len(offs)):
            cos.append(np.dot(offs[i], offs[j]) / (np.linalg.norm(offs[i]) * np.linalg.norm(offs[j])))
    c = np.mean(cos)
    n = len(xs)
    t = n * c / (1 + (n - 1) * c)
    return t * (sum(xs) / n) + (1 - t) * base
