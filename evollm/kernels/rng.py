"""Counter-based random masks (DARE, DELLA): every mask bit is a hash of (seed, candidate, tensor,
input, element index), computed with torch integer ops.

No generator carries state from one element, tensor or call to the next, so a mask is the same
whoever draws it, in whatever order, in pieces or whole, on the CPU or on CUDA: the hash uses only
int64 additions, multiplications, shifts, xors and comparisons whose values never leave [0, 2^63),
so every step is exact integer arithmetic on every device.

The definition (tests/naive.py implements it again in plain Python):

- A *stream* is one (seed, candidate, tensor name, input position); input position is the model's place
  among the tensor's inputs (recipe order, the base appended last when `models` does not list it).
- For the element at flat (row-major) index j, let block = j >> 32 and lo = j & 0xFFFFFFFF. The first
  eight bytes of SHA-256 over "seed\\x1fcandidate\\x1ftensor\\x1finput\\x1fblock" give a = (bytes 0-3,
  little-endian, & 0x7FFFFFFF) | 1 and b = bytes 4-7, little-endian.
- h(j) = mix32((a * lo + b) mod 2^32), with mix32(x): x ^= x >> 16; x = x * 0x21F0AAAD mod 2^32;
  x ^= x >> 15; x = x * 0x735A2D97 mod 2^32; x ^= x >> 15 (a 32-bit finaliser, avalanche bias ~0.1%).
- Its uniform is u(j) = (h(j) >> 8) / 2^24, on a 2^-24 grid like torch.rand's float32; the element is
  kept with probability p when u(j) < p (exactly: (h >> 8) < p * 2^24 with h an integer, p a float).
  The integer h >> 8 < 2^24 is exact in float32, so `uniform24` gives it as float32 and a mask is one
  float comparison: a caller that merges many candidates with the same seed holds these values (they do
  not depend on p) and compares them with each candidate's density.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from functools import lru_cache

import torch

MASK32 = 0xFFFF_FFFF
MIX1, MIX2 = 0x21F0AAAD, 0x735A2D97          # both < 2^31: x * MIX < 2^63 for any 32-bit x
TWO24 = float(1 << 24)


@lru_cache(maxsize=1 << 16)
def _affine(seed: int, candidate: int, tensor: str, index: int, block: int):
    digest = hashlib.sha256("\x1f".join(map(str, (seed, candidate, tensor, index, block))).encode()).digest()
    a = (int.from_bytes(digest[0:4], "little") & 0x7FFF_FFFF) | 1
    b = int.from_bytes(digest[4:8], "little")
    return a, b


_ARANGE: dict = {}


def _arange(n: int, device) -> torch.Tensor:
    """0..n-1 as int64 on `device`, cached (every chunk of a mask starts from it)."""
    key = (str(device), n)
    r = _ARANGE.get(key)
    if r is None:
        if len(_ARANGE) > 64:
            _ARANGE.clear()
        r = _ARANGE[key] = torch.arange(n, dtype=torch.int64, device=device)
    return r


def _pieces(start: int, count: int):
    """[start, start + count) cut where the block (j >> 32) changes."""
    end = start + count
    while start < end:
        stop = min(end, ((start >> 32) + 1) << 32)
        yield start, stop - start
        start = stop


def threshold(p: float) -> int:
    """The integer T with k < T  <=>  k < p * 2^24 for every integer k (0 for p <= 0, 2^24 for p >= 1);
    exact in float32 too."""
    if p <= 0:
        return 0
    if p >= 1:
        return 1 << 24
    return math.ceil(p * TWO24)          # p * 2^24 is exact in float64


class MaskStream:
    """The counter-based stream of one (seed, candidate, tensor, input): `bits` are the element hashes,
    `keep` a Bernoulli mask over any range of flat indices."""

    __slots__ = ("seed", "candidate", "tensor", "index")

    def __init__(self, seed: int, tensor: str, index: int, candidate: int = 0):
        self.seed, self.tensor, self.index, self.candidate = int(seed), str(tensor), int(index), int(candidate)

    def __repr__(self):
        return f"MaskStream(seed={self.seed}, tensor={self.tensor!r}, input={self.index}, candidate={self.candidate})"

    def bits(self, start: int, count: int, device="cpu", out: torch.Tensor = None,
             tmp: torch.Tensor = None) -> torch.Tensor:
        """h(j) for j in [start, start + count) as int64 in [0, 2^32) (`out`, `tmp`: int64 scratch of
        `count` elements, optional)."""
        return bits_rows([self], start, count, device, None if out is None else out.view(1, -1),
                         None if tmp is None else tmp.view(1, -1))[0]

    def uniform24(self, start: int, count: int, device="cpu") -> torch.Tensor:
        """h(j) >> 8 for j in [start, start + count) as float32 (exact integers below 2^24)."""
        return uniform24_rows([self], start, count, device)[0]

    def keep(self, start: int, count: int, p, device="cpu") -> torch.Tensor:
        """Boolean mask of [start, start + count): element j kept when u(j) < p. `p` is a number or a
        tensor of `count` probabilities (DELLA)."""
        u = self.uniform24(start, count, device)
        if isinstance(p, torch.Tensor):
            q = p.reshape(-1)
            q = q if q.dtype == torch.float64 else q.float()
            return u.to(q.dtype) < q * TWO24           # exact: a power-of-two scaling
        return u < threshold(float(p))

    def mask(self, shape, p, device="cpu") -> torch.Tensor:
        """The whole mask of a tensor of `shape` (p a number or a tensor of that shape)."""
        n = math.prod(shape)
        return self.keep(0, n, p, device).reshape(shape)


def bits_rows(streams, start: int, count: int, device="cpu", out: torch.Tensor = None,
              tmp: torch.Tensor = None) -> torch.Tensor:
    """The hashes of several streams over the same index range as one (len(streams), count) int64
    tensor, each torch op working on every stream at once; row i equals streams[i].bits(start, count)."""
    rows = len(streams)
    x = torch.empty((rows, count), dtype=torch.int64, device=device) if out is None else out
    t = torch.empty_like(x) if tmp is None else tmp
    done = 0
    for s, n in _pieces(start, count):
        a, c = (v.reshape(rows, 1) for v in _piece_constants(streams, s, x.device))
        xs, ts = x[:, done:done + n], t[:, done:done + n]
        torch.mul(_arange(n, x.device), a, out=xs)
        xs.add_(c).bitwise_and_(MASK32)
        torch.bitwise_right_shift(xs, 16, out=ts)
        xs.bitwise_xor_(ts).mul_(MIX1).bitwise_and_(MASK32)
        torch.bitwise_right_shift(xs, 15, out=ts)
        xs.bitwise_xor_(ts).mul_(MIX2).bitwise_and_(MASK32)
        torch.bitwise_right_shift(xs, 15, out=ts)
        xs.bitwise_xor_(ts)
        done += n
    return x


def _piece_constants(streams, s: int, device):
    """Per stream, (a, c) as int64 tensors on `device` for the piece starting at flat index `s`:
    a * (lo0 + r) + b = a * r + c (mod 2^32), lo0 the piece's first low index, r the index within it."""
    ab = [_affine(st.seed, st.candidate, st.tensor, st.index, s >> 32) for st in streams]
    a = torch.tensor([v[0] for v in ab], dtype=torch.int64).to(device)
    c = torch.tensor([(v[0] * (s & MASK32) + v[1]) & MASK32 for v in ab], dtype=torch.int64).to(device)
    return a, c


def uniform24_rows(streams, start: int, count: int, device="cpu", out: torch.Tensor = None,
                   scratch=(None, None)) -> torch.Tensor:
    """float32 (len(streams), count): row i is streams[i].uniform24(start, count). On CUDA, one fused
    Triton kernel when it is available and passes its self-check (`_fast`): the same integers, without
    the ~16 int64 passes over memory of the torch ops."""
    if torch.device(device).type == "cuda" and _fast(device):
        if out is None or out.stride(-1) != 1:
            res = torch.empty((len(streams), count), dtype=torch.float32, device=device)
            _uniform24_triton(streams, start, count, res)
            return res if out is None else out.copy_(res)
        return _uniform24_triton(streams, start, count, out)
    x = bits_rows(streams, start, count, device, *scratch)
    x.bitwise_right_shift_(8)
    if out is None:
        return x.to(torch.float32)
    out.copy_(x)
    return out


def uniform24(stream: MaskStream, numel: int, device="cpu", chunk: int = 1 << 16) -> torch.Tensor:
    """A stream's uniforms over a whole tensor of `numel` entries (computed chunk by chunk)."""
    out = torch.empty(numel, dtype=torch.float32, device=device)
    for s in range(0, numel, chunk):
        c = min(chunk, numel - s)
        uniform24_rows([stream], s, c, device, out=out[s:s + c].view(1, -1))
    return out


def mask_stream(seed: int, tensor: str, index: int, candidate: int = 0) -> MaskStream:
    return MaskStream(seed, tensor, index, candidate)


# -- the fused CUDA kernel (Triton ships with torch's CUDA builds; TRITON_INTERPRET=1 runs it on the CPU)

@lru_cache(maxsize=None)
def _kernel():
    """The jitted kernel, or None without a (working) triton; made on first use."""
    try:
        import triton
        import triton.language as tl
    except Exception:           # noqa: BLE001 -- no (working) triton: the torch ops serve everywhere
        return None

    @triton.jit
    def u24(out_ptr, a_ptr, c_ptr, n, stride, BLOCK: tl.constexpr):
        row = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        a = tl.load(a_ptr + row).to(tl.uint32)
        c = tl.load(c_ptr + row).to(tl.uint32)
        x = a * offs.to(tl.uint32) + c             # uint32 arithmetic: exactly mod 2^32
        x = x ^ (x >> 16)
        x = x * 0x21F0AAAD                         # MIX1 (a jitted kernel reads no globals)
        x = x ^ (x >> 15)
        x = x * 0x735A2D97                         # MIX2
        x = x ^ (x >> 15)
        tl.store(out_ptr + row * stride + offs, (x >> 8).to(tl.float32), mask=offs < n)
    return u24


_FAST: dict = {}            # device -> whether the kernel passed its self-check there


def _uniform24_triton(streams, start: int, count: int, out: torch.Tensor) -> torch.Tensor:
    """`uniform24_rows` by the Triton kernel into `out` ((len(streams), count) float32, unit stride)."""
    done, rows = 0, len(streams)
    for s, n in _pieces(start, count):
        a, c = _piece_constants(streams, s, out.device)
        # Triton launches on the current CUDA device (on the CPU: TRITON_INTERPRET=1, the tests)
        with torch.cuda.device(out.device) if out.device.type == "cuda" else contextlib.nullcontext():
            _kernel()[(-(-n // 1024), rows)](out[:, done:done + n], a, c, n, out.stride(0), BLOCK=1024)
        done += n
    return out


def _fast(device) -> bool:
    """Whether the Triton kernel may serve `device`: it imports, compiles, and gives the torch ops'
    values on a sample (checked once per device; a failure falls back to the torch ops, with a warning)."""
    key = str(torch.device(device))
    ok = _FAST.get(key)
    if ok is None:
        ok = False
        if _kernel() is not None:
            try:
                streams = [MaskStream(12345, "self-check", i) for i in range(2)]
                start = (1 << 32) - 3000                # crosses a block boundary
                got = _uniform24_triton(streams, start, 6000, torch.full((2, 6000), -1.0, device=device))
                ok = torch.equal(got.cpu(), uniform24_rows(streams, start, 6000, "cpu"))
                if not ok:
                    warnings.warn(f"evollm: the Triton mask kernel disagrees with the torch ops on {key}; "
                                  "using the torch ops")
            except Exception as e:      # noqa: BLE001 -- compile or launch failure: the torch ops serve
                warnings.warn(f"evollm: the Triton mask kernel is unavailable on {key} ({type(e).__name__}: "
                              f"{str(e)[:200]}); using the torch ops")
        _FAST[key] = ok
    return ok
