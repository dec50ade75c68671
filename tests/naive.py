"""Independent, deliberately plain reference implementations (numpy, loops over entries) of
the merge semantics in docs/design.md (merge methods), to check the kernels against."""

import numpy as np


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
