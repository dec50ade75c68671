"""The task-vector family as one fused kernel: sparsify, rescale, weight, elect signs, combine.

`merge_task_vectors(base, deltas, ...)` takes the task vectors d_i = X_i - B themselves, so a caller
that holds them (a search: they do not change between candidates) does not subtract again, and a
caller that also holds their L1 norms (`l1_norm`) passes those. The combine runs over chunks of the
flat tensor (`chunk_size`), small enough on the CPU that the intermediates of one chunk stay in cache:
the DARE masks of a chunk are computed from their counter-based hashes (`rng.MaskStream`) right where
they are used, and each chunk of the output is written once, into `out` if given (e.g. the live
parameter of a model). Every caller, the streaming export and the in-memory search alike, goes
through this one function with the same chunking on a device type, so they compute the same bits.

Semantics: docs/design.md, merge methods (mergekit 0.1.5's generalized task arithmetic).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from . import sparsify as sp
from .rng import MaskStream

EPS_L1 = 1e-7


def chunk_size(device) -> int:
    """Elements per chunk: on the CPU a slice whose working set (a few float32 rows, the int64 hash
    scratch) fits in a core's L2 cache; on CUDA large, so kernel launches stay few."""
    return (1 << 22) if torch.device(device).type == "cuda" else (1 << 16)


class Workspace:
    """Scratch buffers reused across calls (fresh large allocations cost page faults on every call)."""

    def __init__(self):
        self.buffers = {}

    def get(self, key, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
        device = torch.device(device)
        k = (key, dtype, device.type, device.index)
        buf = self.buffers.get(k)
        if buf is None or buf.numel() < numel:
            buf = self.buffers[k] = torch.empty(max(numel, 1), dtype=dtype, device=device)
        return buf[:numel]

    def clear(self):
        self.buffers.clear()


WORKSPACE = Workspace()


def l1_norm(t: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """sum |t| as a float64 0-d tensor on t's device, accumulated chunk by chunk (the rounding of the
    per-chunk float sums depends on the chunking, so every caller uses `chunk_size(device)`)."""
    flat = t.reshape(-1)
    chunk = chunk or chunk_size(flat.device)
    acc = torch.zeros((), dtype=torch.float64, device=flat.device)
    for s in range(0, flat.numel(), chunk):
        acc += torch.linalg.vector_norm(flat[s:s + chunk], 1)
    return acc


class _Row:
    """One non-base input: its values (the task vector, or DELLA's already sparsified one), its
    weight, its mask (None: all kept; a bool tensor; a MaskStream with keep probability p) and the
    factor its kept entries are multiplied by."""
    __slots__ = ("values", "weight", "mask", "p", "factor", "before")

    def __init__(self, values, weight, mask=None, p=None):
        self.values, self.weight, self.mask, self.p = values, weight, mask, p
        self.factor, self.before = weight, None


def _rescale_mode(params) -> Optional[str]:
    rescale = params.get("rescale")
    return None if rescale in (False, None, "none") else ("l1" if rescale is True else rescale)


def merge_task_vectors(base: torch.Tensor, deltas: Sequence[torch.Tensor], inputs: Sequence[dict], params: dict,
                       streams: Sequence[Optional[MaskStream]] = (), *, sparsify: Optional[str], consensus: bool,
                       norms: Optional[Sequence[torch.Tensor]] = None, out: Optional[torch.Tensor] = None,
                       bounds: Optional[list] = None, chunk: Optional[int] = None) -> torch.Tensor:
    """B + lambda * combine_i(w_i * sparsify(d_i)) for task vectors `deltas` (each shaped like `base`, in
    its dtype) with per-model parameters `inputs` (weight, density, gamma, epsilon) and the method's
    global `params` (lambda, normalize, rescale). `streams[i]`: the mask stream of delta i (random
    sparsification); `norms[i]`: `l1_norm(deltas[i])` if already known. The result goes into `out`
    (shaped like base, any floating dtype; default: a new tensor of base's dtype) chunk by chunk; with
    `bounds` (a list) the (min, max) of each chunk, before any cast, are appended for a NaN/inf check.
    The deltas are never modified."""
    dtype, device = base.dtype, base.device
    n = base.numel()
    b = base.reshape(-1)
    if out is None:
        out = torch.empty(base.shape, dtype=dtype, device=device)
    if not out.is_contiguous() or out.shape != base.shape:
        raise ValueError("merge_task_vectors: `out` must be contiguous and shaped like the base")
    dst = out.view(-1)
    if not len(deltas):
        out.copy_(base)
        return out
    rescale = _rescale_mode(params)
    if rescale not in sp.RESCALE_MODES:
        raise ValueError(f"unknown rescale mode {rescale!r}; expected one of {sp.RESCALE_MODES}")
    chunk = chunk or chunk_size(device)
    zero = torch.zeros((), dtype=dtype, device=device)

    rows: List[_Row] = []
    weights = []
    for i, (d, p) in enumerate(zip(deltas, inputs)):
        w = float(p["weight"])
        weights.append(w)
        flat = d.reshape(-1)
        density = p.get("density", 1.0)
        if sparsify is None or density >= 1:
            rows.append(_Row(flat, w))
            continue
        if sparsify in ("magnitude", "outliers") and rescale == "density":
            if sparsify == "outliers" or (density > 0 and n > 0):
                raise ValueError("rescale='density' applies only to random drops (dare_*, della*)")
        if sparsify == "magnitude":
            if density <= 0 or n == 0:
                continue                                    # a zero row: nothing kept
            mag = flat.abs()
            mag = mag.float() if mag.device.type == "cpu" else mag
            rows.append(_Row(flat, w, sp.rank_mask(mag, max(1, int(density * n)), largest=True)))
        elif sparsify == "outliers":
            target = int(density * n)
            n_bottom = max(0, n - target - int(p["gamma"] * n))
            mag = flat.abs()
            mag = mag.float() if mag.device.type == "cpu" else mag
            drop = sp.rank_mask(mag, n - n_bottom - target, largest=True) | sp.rank_mask(mag, n_bottom, largest=False)
            rows.append(_Row(flat, w, ~drop))
        elif sparsify == "random":
            if density <= 0:
                continue
            rows.append(_Row(flat, w, streams[i], float(density)))
            if rescale == "density":
                rows[-1].factor = w / float(density)
        elif sparsify == "della":
            if density <= 0:
                continue
            kept = sp.della_magprune(d, density, p["epsilon"], streams[i], rescale)
            rows.append(_Row(kept.reshape(-1), w))          # sparsified and rescaled already
        else:
            raise ValueError(f"unknown sparsification {sparsify!r}")
        if rows and norms is not None and rows[-1].mask is not None:
            rows[-1].before = norms[i]

    masked = [r for r in rows if r.mask is not None]
    hashed = [r for r in masked if isinstance(r.mask, MaskStream)]
    bits = (WORKSPACE.get("bits", min(chunk, n), torch.int64, device),
            WORKSPACE.get("bits2", min(chunk, n), torch.int64, device))
    stored = None
    if rescale == "l1" and masked:
        # pass 1: the L1 norm of every kept vector (its rescale factor needs the whole tensor); hashed
        # masks are kept for pass 2
        if hashed:
            stored = WORKSPACE.get("masks", len(hashed) * n, torch.bool, device).view(len(hashed), n)
        tmp = WORKSPACE.get("pass1", min(chunk, n), dtype, device)
        after = [torch.zeros((), dtype=torch.float64, device=device) for _ in masked]
        before = [r.before if r.before is not None else torch.zeros((), dtype=torch.float64, device=device)
                  for r in masked]
        for s in range(0, n, chunk):
            c = min(chunk, n - s)
            h = 0
            for k, r in enumerate(masked):
                v = r.values[s:s + c]
                if isinstance(r.mask, MaskStream):
                    m = r.mask.keep(s, c, r.p, device, out=stored[h, s:s + c], scratch=(bits[0][:c], bits[1][:c]))
                    h += 1
                else:
                    m = r.mask[s:s + c]
                after[k] += torch.linalg.vector_norm(torch.where(m, v, zero, out=tmp[:c]), 1)
                if r.before is None:
                    before[k] += torch.linalg.vector_norm(v, 1)
        for r, bn, an in zip(masked, before, after):
            ok = (bn >= EPS_L1) & (an >= EPS_L1)
            r.factor = torch.where(ok, bn / torch.where(ok, an, 1.0), 1.0) * r.weight

    live = len(rows)
    normalize = bool(params["normalize"])
    d_buf = WORKSPACE.get("rows", max(live, 1) * min(chunk, n), dtype, device).view(max(live, 1), -1)
    m_buf = WORKSPACE.get("mask", min(chunk, n), torch.bool, device)
    tmp_out = None if dst.dtype == dtype else WORKSPACE.get("out", min(chunk, n), dtype, device)
    if consensus and normalize and live:
        wcol = torch.tensor([r.weight for r in rows], dtype=dtype, device=device).reshape(-1, 1)
    if not consensus and normalize:
        divisor = torch.tensor(weights, dtype=dtype, device=device).sum()
        if abs(float(divisor)) < 1e-8:
            divisor = torch.ones((), dtype=dtype, device=device)
    lam = float(params["lambda"])
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        D = d_buf[:, :c]
        h = 0
        for k, r in enumerate(rows):
            v = r.values[s:s + c]
            if r.mask is None:
                torch.mul(v, r.factor, out=D[k])
                continue
            if isinstance(r.mask, MaskStream):
                if stored is not None:
                    m = stored[h, s:s + c]
                    h += 1
                else:
                    m = r.mask.keep(s, c, r.p, device, out=m_buf[:c], scratch=(bits[0][:c], bits[1][:c]))
            else:
                m = r.mask[s:s + c]
            torch.where(m, v, zero, out=D[k])
            D[k].mul_(r.factor)
        if not live:
            merged = torch.zeros(c, dtype=dtype, device=device)
        elif consensus:
            # elected sign: that of the sum, an exact zero counting as positive; D * sign > 0 where an
            # entry agrees, so the kept sum is sign * sum(relu(D * sign))
            sgn = torch.where(D.sum(dim=0) >= 0, 1.0, -1.0).to(dtype)
            D.mul_(sgn)
            if normalize:
                divisor = (D > 0).to(dtype).mul_(wcol).sum(dim=0)
                divisor[divisor == 0] = 1
            merged = D.clamp_min_(0).sum(dim=0).mul_(sgn)
        else:
            merged = D.sum(dim=0)
        if normalize and live:
            merged.div_(divisor)
        if lam != 1:
            merged.mul_(lam)
        target = dst[s:s + c] if tmp_out is None else tmp_out[:c]
        torch.add(merged, b[s:s + c], out=target)
        if bounds is not None:
            bounds.append(torch.stack(torch.aminmax(target)))
        if tmp_out is not None:
            dst[s:s + c].copy_(target)
    return out
