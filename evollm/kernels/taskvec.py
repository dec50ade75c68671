"""The task-vector family as one fused kernel: sparsify, rescale, weight, elect signs, combine.

`merge_task_vectors(base, deltas, ...)` takes the task vectors d_i = X_i - B themselves, so a caller
that holds them (a search: they do not change between candidates) does not subtract again; a caller
that also holds their L1 norms (`l1_norm`) and their DARE uniforms (`rng.uniform24`: they depend on
seed, tensor and input, not on the candidate's density) passes those too. The combine runs over chunks
of the flat tensor (`chunk_size`), small enough on the CPU that the intermediates of a chunk stay in
cache, and writes each chunk of the output once, into `out` if given (e.g. the live parameter of a
model). Masks are float 0/1 multipliers (a masked-out entry is d * 0, so a non-finite task-vector entry
makes the merge fail even where it is dropped). Every caller, the streaming export and the in-memory
search alike, goes through this one function with the same chunking on a device type, so they
compute the same bits.

Semantics: docs/design.md, merge methods (mergekit 0.1.5's generalized task arithmetic).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from . import sparsify as sp
from .rng import MaskStream, threshold, uniform24_rows

EPS_L1 = 1e-7


def chunk_size(device) -> int:
    """Elements per chunk: on the CPU a slice whose working set (a few float32 rows, the int64 hash
    scratch) stays in a core's L2 cache; on CUDA large, so kernel launches stay few."""
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

    def rows(self, key, rows: int, cols: int, dtype, device) -> torch.Tensor:
        return self.get(key, max(rows, 1) * cols, dtype, device).view(max(rows, 1), cols)

    def clear(self):
        self.buffers.clear()


WORKSPACE = Workspace()


def l1_norm(t: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """sum |t| as a float64 0-d tensor on t's device: the float sums of 1-d chunks (`chunk_size`),
    added in float64. The kernel computes the norms it needs exactly this way, so held norms equal
    computed ones bit for bit."""
    flat = t.reshape(-1)
    chunk = chunk or chunk_size(flat.device)
    n = flat.numel()
    parts = torch.zeros(max(1, -(-n // chunk)), dtype=flat.dtype, device=flat.device)
    tmp = WORKSPACE.get("l1", min(chunk, n), flat.dtype, flat.device)
    for ci, s in enumerate(range(0, n, chunk)):
        c = min(chunk, n - s)
        torch.sum(torch.abs(flat[s:s + c], out=tmp[:c]), dim=0, out=parts[ci])
    return parts.double().sum()


def _stacked(rows: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """A (len(rows), numel) view of 1-d `rows` that lie evenly spaced in one storage (rows of one
    buffer), else None. Only elementwise ops use it: reductions always run on 1-d rows, so a result
    never depends on how a caller laid out its inputs."""
    r0 = rows[0]
    n = r0.numel()
    if any(r.dim() != 1 or r.numel() != n or r.dtype != r0.dtype or r.stride(0) != 1 or r.device != r0.device
           or r.untyped_storage().data_ptr() != r0.untyped_storage().data_ptr() for r in rows):
        return None
    if len(rows) == 1:
        return r0.view(1, n)
    step = rows[1].storage_offset() - r0.storage_offset()
    if step < n or any(r.storage_offset() - r0.storage_offset() != i * step for i, r in enumerate(rows)):
        return None
    return torch.as_strided(r0, (len(rows), n), (step, 1))


class _Row:
    """One non-base input that contributes: its values (the task vector, or DELLA's already sparsified
    one), its weight, how it is masked and the factor its kept entries are multiplied by.
    kind: 'all' (nothing dropped), 'stream' (hash computed here), 'held' (held uniforms), 'bool'
    (a boolean mask of the whole tensor)."""
    __slots__ = ("values", "weight", "kind", "src", "thr", "factor", "before")

    def __init__(self, values, weight, kind="all", src=None, thr=None):
        self.values, self.weight, self.kind, self.src, self.thr = values, weight, kind, src, thr
        self.factor, self.before = weight, None


def _rescale_mode(params) -> Optional[str]:
    rescale = params.get("rescale")
    return None if rescale in (False, None, "none") else ("l1" if rescale is True else rescale)


def merge_task_vectors(base: torch.Tensor, deltas: Sequence[torch.Tensor], inputs: Sequence[dict], params: dict,
                       streams: Sequence = (), *, sparsify: Optional[str], consensus: bool,
                       norms: Optional[Sequence[torch.Tensor]] = None, out: Optional[torch.Tensor] = None,
                       bounds: Optional[list] = None, chunk: Optional[int] = None) -> torch.Tensor:
    """B + lambda * combine_i(w_i * sparsify(d_i)) for task vectors `deltas` (each shaped like `base`, in
    its dtype) with per-model parameters `inputs` (weight, density, gamma, epsilon) and the method's
    global `params` (lambda, normalize, rescale). `streams[i]` (random sparsification): the MaskStream of
    delta i, or its uniforms over the whole tensor (`rng.uniform24`, float32, flat) when held;
    `norms[i]`: `l1_norm(deltas[i])` if already known. The result goes into `out` (contiguous, shaped
    like base, any floating dtype; default: a new tensor of base's dtype) chunk by chunk; with `bounds`
    (a list) the (min, max) of each chunk, before any cast, are appended for a NaN/inf check. The
    deltas and held values are never modified."""
    dtype, device = base.dtype, base.device
    n = base.numel()
    b = base.reshape(-1)
    if out is None:
        out = torch.empty(base.shape, dtype=dtype, device=device)
    if not out.is_contiguous() or out.shape != base.shape:
        raise ValueError("merge_task_vectors: `out` must be contiguous and shaped like the base")
    if not len(deltas):
        out.copy_(base)
        return out
    dst = out.view(-1)
    rescale = _rescale_mode(params)
    if rescale not in sp.RESCALE_MODES:
        raise ValueError(f"unknown rescale mode {rescale!r}; expected one of {sp.RESCALE_MODES}")
    chunk = chunk or chunk_size(device)
    cmax = max(1, min(chunk, n))

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
                continue                                    # nothing kept: the row adds nothing
            mag = flat.abs()
            mag = mag.float() if mag.device.type == "cpu" else mag
            row = _Row(flat, w, "bool", sp.rank_mask(mag, max(1, int(density * n)), largest=True))
        elif sparsify == "outliers":
            target = int(density * n)
            n_bottom = max(0, n - target - int(p["gamma"] * n))
            mag = flat.abs()
            mag = mag.float() if mag.device.type == "cpu" else mag
            drop = sp.rank_mask(mag, n - n_bottom - target, largest=True) | sp.rank_mask(mag, n_bottom, largest=False)
            row = _Row(flat, w, "bool", ~drop)
        elif sparsify == "random":
            if density <= 0:
                continue
            st = streams[i]
            row = _Row(flat, w, "stream" if isinstance(st, MaskStream) else "held", st, float(threshold(density)))
            if rescale == "density":
                row.factor = w / float(density)
        elif sparsify == "della":
            if density <= 0:
                continue
            st = streams[i]
            if not isinstance(st, MaskStream):
                raise ValueError("della takes mask streams, not held uniforms")
            rows.append(_Row(sp.della_magprune(d, density, p["epsilon"], st, rescale).reshape(-1), w))
            continue                                        # sparsified and rescaled already
        else:
            raise ValueError(f"unknown sparsification {sparsify!r}")
        if norms is not None:
            row.before = norms[i]
        rows.append(row)

    live = len(rows)
    masked = [r for r in rows if r.kind != "all"]
    computed = [r for r in masked if r.kind == "stream"]
    nm = len(masked)
    # rows of one buffer are handled by one op per step; any others one by one (same values)
    V = _stacked([r.values for r in rows]) if live else None
    Vm = V if (V is not None and nm == live) else None
    held = [r for r in masked if r.kind == "held"]
    U = _stacked([r.src for r in held]) if held and len(held) == nm else None
    if U is not None:
        thr = torch.tensor([r.thr for r in held], dtype=torch.float32, device=device).reshape(-1, 1)
    m_buf = WORKSPACE.rows("masks", nm, cmax, dtype, device)
    u_buf = WORKSPACE.rows("uniforms", len(computed), cmax, torch.float32, device)
    scratch = (WORKSPACE.rows("bits", len(computed), cmax, torch.int64, device),
               WORKSPACE.rows("bits2", len(computed), cmax, torch.int64, device))
    stored = None                  # pass 1's hashed masks (bool), kept for pass 2
    state = {"stored": False}

    def masks(s, c):
        """The masks of the masked rows over [s, s + c) as float 0/1 rows of m_buf."""
        M = m_buf[:, :c]
        if U is not None:
            return torch.lt(U[:, s:s + c], thr, out=M)
        u = None
        if computed and not state["stored"]:
            u = uniform24_rows([r.src for r in computed], s, c, device, out=u_buf[:, :c],
                               scratch=(scratch[0][:, :c], scratch[1][:, :c]))
        h = 0
        for k, r in enumerate(masked):
            if r.kind == "held":
                torch.lt(r.src[s:s + c], r.thr, out=M[k])
            elif r.kind == "bool":
                M[k].copy_(r.src[s:s + c])
            elif u is None:
                M[k].copy_(stored[h, s:s + c])
                h += 1
            else:
                torch.lt(u[h], r.thr, out=M[k])
                if stored is not None:
                    stored[h, s:s + c].copy_(M[k])
                h += 1
        return M

    def kept(s, c, M, out):
        """out[k] = values of masked row k times its mask, over [s, s + c)."""
        if Vm is not None:
            return torch.mul(Vm[:, s:s + c], M, out=out)
        for k, r in enumerate(masked):
            torch.mul(r.values[s:s + c], M[k], out=out[k])
        return out

    if rescale == "l1" and masked:
        # pass 1: the L1 norms of the kept vectors (a rescale factor needs the whole tensor), each the
        # float sums of 1-d chunks added in float64 as `l1_norm` does; masks hashed here are kept
        if computed:
            stored = WORKSPACE.rows("stored", len(computed), n, torch.bool, device)
        n_chunks = -(-n // chunk)
        parts = torch.zeros((2, nm, n_chunks), dtype=dtype, device=device)
        tmp = WORKSPACE.rows("pass1", nm, cmax, dtype, device)
        for ci, s in enumerate(range(0, n, chunk)):
            c = min(chunk, n - s)
            T = kept(s, c, masks(s, c), tmp[:, :c]).abs_()
            for k, r in enumerate(masked):
                torch.sum(T[k], dim=0, out=parts[0, k, ci])
                if r.before is None:
                    torch.sum(torch.abs(r.values[s:s + c], out=T[k]), dim=0, out=parts[1, k, ci])
        state["stored"] = True
        for k, r in enumerate(masked):
            an = parts[0, k].double().sum()
            bn = r.before if r.before is not None else parts[1, k].double().sum()
            ok = (bn >= EPS_L1) & (an >= EPS_L1)
            r.factor = (torch.where(ok, bn / torch.where(ok, an, 1.0), 1.0) * r.weight).to(dtype)
    factors = torch.stack([torch.as_tensor(r.factor, dtype=dtype, device=device) for r in rows]).reshape(-1, 1) \
        if live else None

    normalize = bool(params["normalize"])
    D_buf = WORKSPACE.rows("rows", live, cmax, dtype, device)
    K_buf = WORKSPACE.rows("keep", live, cmax, dtype, device)
    v_buf = WORKSPACE.rows("vec", 3, cmax, dtype, device)          # elected sign, sums, divisor
    tmp_out = None if dst.dtype == dtype else WORKSPACE.get("out", cmax, dtype, device)
    if consensus and normalize and live:
        wcol = torch.tensor([r.weight for r in rows], dtype=dtype, device=device).reshape(-1, 1)
    if not consensus and normalize:
        divisor = torch.tensor(weights, dtype=dtype, device=device).sum()
        if abs(float(divisor)) < 1e-8:
            divisor = torch.ones((), dtype=dtype, device=device)
    lam = float(params["lambda"])
    mask_pos = {id(r): k for k, r in enumerate(masked)}
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        D = D_buf[:, :c]
        if live:
            M = masks(s, c) if masked else None
            if Vm is not None:                              # every row masked, rows of one buffer
                kept(s, c, M, D)
            elif V is not None and not masked:              # nothing masked
                D.copy_(V[:, s:s + c])
            else:
                for k, r in enumerate(rows):
                    v = r.values[s:s + c]
                    if r.kind == "all":
                        D[k].copy_(v)
                    else:
                        torch.mul(v, M[mask_pos[id(r)]], out=D[k])
            D.mul_(factors)
        if not live:
            merged = torch.zeros(c, dtype=dtype, device=device)
        elif consensus:
            # elected sign: that of the sum, an exact zero counting as positive; D * sign > 0 where an
            # entry agrees, so the kept sum is sign * sum(relu(D * sign))
            sgn = torch.ge(torch.sum(D, dim=0, out=v_buf[1, :c]), 0, out=v_buf[0, :c]).mul_(2).sub_(1)
            D.mul_(sgn)
            if normalize:
                K = torch.gt(D, 0, out=K_buf[:, :c]).mul_(wcol)
                divisor = torch.sum(K, dim=0, out=v_buf[2, :c])
                divisor.add_(torch.eq(divisor, 0, out=v_buf[1, :c]))       # a zero divisor becomes 1
            merged = torch.sum(D.clamp_min_(0), dim=0, out=v_buf[1, :c]).mul_(sgn)
        else:
            merged = torch.sum(D, dim=0, out=v_buf[1, :c])
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
