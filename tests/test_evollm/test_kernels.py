"""Merge kernels against hand-computed values and the naive implementations in naive.py."""

import os

import numpy as np
import pytest
import torch

from evollm.kernels import get_method, mask_stream
from evollm.kernels import sparsify as sp
from evollm.kernels.rng import MaskStream, threshold
from evollm.kernels.methods import slerp_tensors

import naive


def run(method, tensors, base=None, params=None, inputs=None, seed=0):
    m = get_method(method)
    g = {p.name: p.default for p in m.params if p.scope == "global"}
    g.update(params or {})
    rng = lambda i: mask_stream(seed, "t", i)  # noqa: E731
    return m.fn([torch.as_tensor(t, dtype=torch.float64) for t in tensors], base, g, inputs, rng)


def test_linear_by_hand():
    a, b = np.array([1.0, 2.0]), np.array([3.0, 6.0])
    out = run("linear", [a, b], inputs=[{"weight": 1.0}, {"weight": 3.0}])
    assert out.tolist() == [2.5, 5.0]
    out = run("linear", [a, b], params={"normalize": False}, inputs=[{"weight": 1.0}, {"weight": 3.0}])
    assert out.tolist() == [10.0, 20.0]
    with pytest.raises(ValueError, match="sum to 0"):
        run("linear", [a, b], inputs=[{"weight": 1.0}, {"weight": -1.0}])


def test_task_arithmetic_by_hand():
    base, x, y = np.array([1.0, 1.0]), np.array([2.0, 0.0]), np.array([1.0, 3.0])
    out = run("task_arithmetic", [base, x, y], base=0, params={"lambda": 2.0},
              inputs=[{}, {"weight": 0.5, "density": 1.0}, {"weight": 1.0, "density": 1.0}])
    # base + 2 * (0.5 * [1, -1] + 1 * [0, 2]) = [1, 1] + 2 * [0.5, 1.5]
    assert out.tolist() == [2.0, 4.0]


def test_ties_sign_election_ties_and_zeros_by_hand():
    base = np.zeros(5)
    x = np.array([1.0, -2.0, 0.0, 3.0, -1.0])
    y = np.array([-1.0, 1.0, 0.0, 0.0, 1.0])
    out = run("ties", [base, x, y], base=0,
              inputs=[{}, {"weight": 1.0, "density": 1.0}, {"weight": 1.0, "density": 1.0}])
    # entry 0: sum 0 -> '+' wins, only x's +1 kept, divided by weight 1 -> 1
    # entry 1: sum -1 -> '-', x's -2 kept -> -2
    # entry 2: all zero -> divisor 0 -> 1 -> 0
    # entry 3: only x nonzero -> 3 (y's zero does not count in the divisor)
    # entry 4: sum 0 -> '+', y's +1 kept -> 1
    assert out.tolist() == [1.0, -2.0, 0.0, 3.0, 1.0]
    raw = run("ties", [base, x, y], base=0, params={"normalize": False},
              inputs=[{}, {"weight": 2.0, "density": 1.0}, {"weight": 1.0, "density": 1.0}])
    assert raw.tolist() == [2.0, -4.0, 0.0, 6.0, -2.0]


@pytest.mark.parametrize("normalize,lam", [(True, 1.0), (False, 0.7)])
def test_ties_matches_naive(normalize, lam):
    rs = np.random.RandomState(0)
    base = rs.randn(6, 7)
    xs = [base + rs.randn(6, 7) for _ in range(3)]
    weights, dens = [0.5, 1.0, 0.3], [0.2, 0.5, 0.9]
    ours = run("ties", [base, *xs], base=0, params={"normalize": normalize, "lambda": lam},
               inputs=[{}] + [{"weight": w, "density": d} for w, d in zip(weights, dens)])
    ref = naive.ties(base, xs, weights, dens, normalize=normalize, lam=lam)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_topk_keeps_at_least_one_and_exact_count():
    d = torch.tensor([0.1, -5.0, 0.3, 2.0])
    assert sp.magnitude(d, 0.01).tolist() == [0.0, -5.0, 0.0, 0.0]   # max(1, int(0.04)) = 1
    assert sp.magnitude(d, 0.5).tolist() == [0.0, -5.0, 0.0, 2.0]
    assert sp.magnitude(d, 0.0).tolist() == [0.0] * 4
    assert sp.magnitude(d, 1.0) is d


def test_dare_rescale_conventions():
    d = torch.randn(10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    st = mask_stream(5, "d", 0)
    kept_l1 = sp.bernoulli(d, 0.3, st, rescale="l1")
    kept_p = sp.bernoulli(d, 0.3, st, rescale="density")
    kept_raw = sp.bernoulli(d, 0.3, st, rescale=None)
    mask = kept_raw != 0
    assert torch.equal(mask, kept_p != 0) and torch.equal(mask, kept_l1 != 0)
    assert abs(mask.double().mean().item() - 0.3) < 0.02
    # mergekit convention: L1 norm of the kept vector equals the original's
    assert torch.isclose(kept_l1.abs().sum(), d.abs().sum(), rtol=1e-12)
    scale = d.abs().sum() / d[mask].abs().sum()
    torch.testing.assert_close(kept_l1[mask], d[mask] * scale)
    # DARE paper convention: divide by the keep probability
    torch.testing.assert_close(kept_p[mask], d[mask] / 0.3)
    torch.testing.assert_close(kept_raw[mask], d[mask])


def test_dare_masks_are_seeded_per_tensor_and_model():
    d = torch.randn(1000)
    a = sp.bernoulli(d, 0.5, mask_stream(0, "w", 1))
    b = sp.bernoulli(d, 0.5, mask_stream(0, "w", 1))
    c = sp.bernoulli(d, 0.5, mask_stream(1, "w", 1))
    e = sp.bernoulli(d, 0.5, mask_stream(0, "w", 2))
    f = sp.bernoulli(d, 0.5, mask_stream(0, "w2", 1))
    g = sp.bernoulli(d, 0.5, mask_stream(0, "w", 1, candidate=1))
    assert torch.equal(a, b)
    assert not any(torch.equal(a, x) for x in (c, e, f, g))
    torch.manual_seed(123)            # the global RNG plays no part
    assert torch.equal(a, sp.bernoulli(d, 0.5, mask_stream(0, "w", 1)))


def test_mask_hashes_follow_their_definition():
    """The torch integer code equals the definition computed one entry at a time in Python (naive.py),
    across the 2^32 block boundary too; a few values are pinned so that a change is seen."""
    st = MaskStream(7, "model.layers.0.mlp.up_proj.weight", 2)
    got = st.bits(0, 300).tolist()
    assert got == [naive.mask_hash(7, "model.layers.0.mlp.up_proj.weight", 2, j) for j in range(300)]
    start = (1 << 32) - 5
    assert st.bits(start, 10).tolist() == [naive.mask_hash(7, "model.layers.0.mlp.up_proj.weight", 2, j)
                                           for j in range(start, start + 10)]
    assert MaskStream(0, "t", 1).bits(0, 4).tolist() == [naive.mask_hash(0, "t", 1, j) for j in range(4)] \
        == PINNED
    # keep iff (hash >> 8) < p * 2^24, exactly
    assert st.uniform24(0, 300).tolist() == [float(h >> 8) for h in got]
    for p in (0.0, 1e-9, 0.3, 0.5, 1 - 1e-12, 1.0):
        assert st.keep(0, 300, p).tolist() == [(h >> 8) < p * 2**24 for h in got]
        assert (threshold(p) - 1 < p * 2**24 <= threshold(p)) or p in (0.0, 1.0)


PINNED = [1389941841, 2961399541, 1348021185, 2784069575]


def test_masks_do_not_depend_on_how_they_are_cut():
    st = mask_stream(3, "x", 0)
    whole = st.keep(0, 100_000, 0.4)
    pieces = torch.cat([st.keep(s, min(7_777, 100_000 - s), 0.4) for s in range(0, 100_000, 7_777)])
    assert torch.equal(whole, pieces)
    assert torch.equal(st.mask((250, 400), 0.4).reshape(-1), whole)


def test_masks_look_like_independent_coin_flips():
    n = 1 << 20
    a = mask_stream(0, "model.embed_tokens.weight", 0).keep(0, n, 0.5)
    b = mask_stream(0, "model.embed_tokens.weight", 1).keep(0, n, 0.5)
    sd = (0.25 / n) ** 0.5
    for m in (a, b):
        assert abs(m.double().mean().item() - 0.5) < 5 * sd
        assert abs((m[1:] & m[:-1]).double().mean().item() - 0.25) < 5 * 2 * sd        # neighbours
        assert abs((m[256:] & m[:-256]).double().mean().item() - 0.25) < 5 * 2 * sd    # rows apart
    assert abs((a & b).double().mean().item() - 0.25) < 5 * 2 * sd                       # two inputs
    for p in (0.05, 0.9):
        frac = mask_stream(1, "t", 0).keep(0, n, p).double().mean().item()
        assert abs(frac - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_dare_ties_equals_ties_combination_of_dare_masks():
    rs = np.random.RandomState(3)
    base = rs.randn(40)
    xs = [base + rs.randn(40) for _ in range(2)]
    w, dens = [0.7, 0.4], [0.5, 0.6]
    inputs = [{}] + [{"weight": a, "density": b} for a, b in zip(w, dens)]
    ours = run("dare_ties", [base, *xs], base=0, seed=9, inputs=inputs)
    deltas = [naive.dare(x - base, p, 9, "t", i + 1) for i, (x, p) in enumerate(zip(xs, dens))]
    ref = naive.combine(base, deltas, w, consensus=True, normalize=False)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-12)
    lin = run("dare_linear", [base, *xs], base=0, seed=9, inputs=inputs)
    np.testing.assert_allclose(lin.numpy(), naive.combine(base, deltas, w, consensus=False, normalize=False),
                               rtol=1e-12, atol=1e-12)
    paper = run("dare_ties", [base, *xs], base=0, seed=9, inputs=inputs, params={"rescale": "density", "normalize": True})
    deltas = [naive.dare(x - base, p, 9, "t", i + 1, rescale="density") for i, (x, p) in enumerate(zip(xs, dens))]
    np.testing.assert_allclose(paper.numpy(), naive.combine(base, deltas, w, consensus=True, normalize=True),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rescale", ["l1", "density"])
def test_della_matches_naive(rescale):
    rs = np.random.RandomState(4)
    base = rs.randn(5, 9)
    xs = [base + rs.randn(5, 9) for _ in range(3)]
    w, dens, eps = [0.7, 0.4, 1.1], [0.5, 0.3, 0.6], [0.1, 0.2, 0.15]
    inputs = [{"weight": a, "density": b, "epsilon": e} for a, b, e in zip(w, dens, eps)] + [{}]
    for method, consensus, normalize in (("della", True, True), ("della_linear", False, False)):
        ours = run(method, [*xs, base], base=3, seed=2, inputs=inputs, params={"rescale": rescale})
        deltas = [naive.della(x - base, p, e, 2, "t", i, rescale) for i, (x, p, e) in enumerate(zip(xs, dens, eps))]
        np.testing.assert_allclose(ours.numpy(), naive.combine(base, deltas, w, consensus=consensus,
                                                               normalize=normalize), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs", "task_arithmetic"])
def test_fused_kernel_ignores_chunking_in_its_masks_and_sums_exactly(method):
    """Chunk by chunk or whole, the fused kernel gives the same result (up to the rounding of the L1
    norms' partial sums), and it never writes into the task vectors."""
    from evollm.kernels.taskvec import merge_task_vectors
    m = get_method(method)
    g = {p.name: p.default for p in m.params if p.scope == "global"}
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(300, 257, dtype=torch.float64, generator=gen)
    deltas = [torch.randn(300, 257, dtype=torch.float64, generator=gen) for _ in range(3)]
    copies = [d.clone() for d in deltas]
    inputs = [{"weight": w, "density": dd, "gamma": 0.01} for w, dd in ((0.5, 0.3), (1.0, 0.7), (0.8, 1.0))]
    streams = [mask_stream(0, "t", i) for i in range(3)]
    tv = m.task_vectors
    outs = [merge_task_vectors(base, deltas, inputs, g, streams, sparsify=tv.sparsify, consensus=tv.consensus,
                               chunk=c) for c in (1 << 10, 4099, base.numel())]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-13, atol=1e-13)
    assert all(torch.equal(a, b) for a, b in zip(deltas, copies))


def test_slerp_ends_orthogonal_and_parallel_fallback():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    torch.testing.assert_close(slerp_tensors(0.0, a, b), a)
    torch.testing.assert_close(slerp_tensors(1.0, a, b), b)
    # orthogonal: theta = pi/2, coefficients sin((1-t) pi/2), sin(t pi/2)
    mid = slerp_tensors(0.5, a, b)
    torch.testing.assert_close(mid, torch.tensor([np.sqrt(0.5), 2 * np.sqrt(0.5)], dtype=torch.float32))
    # near-parallel: cos > 0.9995 -> plain linear interpolation
    c = torch.tensor([1.0, 0.01])
    d = torch.tensor([2.0, 0.0])
    torch.testing.assert_close(slerp_tensors(0.25, c, d), 0.75 * c + 0.25 * d)
    rs = np.random.RandomState(0)
    x, y = rs.randn(3, 4), rs.randn(3, 4)
    out = run("slerp", [x, y], base=0, params={"t": 0.3}, inputs=[{}, {}])
    np.testing.assert_allclose(out.numpy(), naive.slerp(0.3, x, y), rtol=1e-6, atol=1e-6)
    swapped = run("slerp", [y, x], base=1, params={"t": 0.3}, inputs=[{}, {}])
    np.testing.assert_allclose(swapped.numpy(), out.numpy(), rtol=1e-6)


def test_breadcrumbs_drops_both_tails():
    d = torch.arange(1, 21, dtype=torch.float64) * torch.tensor([1.0, -1.0] * 10)   # |d| = 1..20
    out = sp.magnitude_outliers(d, density=0.5, gamma=0.1)
    kept = sorted(int(v) for v in out.abs().tolist() if v)
    # 10 kept; the 2 largest (gamma * 20) are outliers; the 8 smallest are dropped
    assert kept == list(range(9, 19))
    # the cuts overlap: fewer outliers are dropped so 18 entries stay
    out = sp.magnitude_outliers(d, density=0.9, gamma=0.2)
    assert sorted(int(v) for v in out.abs().tolist() if v) == list(range(1, 19))
    rs = np.random.RandomState(1)
    base = rs.randn(30)
    xs = [base + rs.randn(30) for _ in range(2)]
    ours = run("breadcrumbs_ties", [base, *xs], base=0,
               inputs=[{}, {"weight": 1.0, "density": 0.6, "gamma": 0.1}, {"weight": 0.5, "density": 0.4, "gamma": 0.05}])
    deltas = [naive.breadcrumbs_trim(xs[0] - base, 0.6, 0.1), naive.breadcrumbs_trim(xs[1] - base, 0.4, 0.05)]
    np.testing.assert_allclose(ours.numpy(), naive.combine(base, deltas, [1.0, 0.5], consensus=True, normalize=False))


def test_della_keep_probabilities_follow_magnitude_rank():
    row = torch.arange(1, 11, dtype=torch.float64)          # magnitudes ranked 0..9
    trials = 4000
    kept = torch.zeros(10, dtype=torch.float64)
    for trial in range(trials):          # one stream per trial (a stream's mask is fixed)
        kept += (sp.della_magprune(row, 0.5, 0.2, mask_stream(trial, "row", 0), rescale=None) != 0).double()
    freq = kept / trials
    expected = 0.3 + torch.arange(10, dtype=torch.float64) / 9 * 0.4   # 0.3 .. 0.7
    assert torch.allclose(freq, expected, atol=0.04), freq
    # DELLA paper rescale (1/p): unbiased
    mean = sum(sp.della_magprune(row, 0.5, 0.2, mask_stream(trial, "row", 1), rescale="density")
               for trial in range(trials)) / trials
    assert torch.allclose(mean, row, rtol=0.08)
    with pytest.raises(ValueError, match="density \\+/- epsilon"):
        sp.della_magprune(row, 0.9, 0.15, mask_stream(0, "row", 0))
    # ranks are per row of a matrix
    m = torch.tensor([[1.0, 100.0], [100.0, 1.0]])
    probs_seen = torch.zeros(2, 2)
    for trial in range(2000):
        probs_seen += (sp.della_magprune(m, 0.5, 0.4, mask_stream(trial, "m", 0), rescale=None) != 0).float()
    assert probs_seen[0, 1] > probs_seen[0, 0] * 4 and probs_seen[1, 0] > probs_seen[1, 1] * 4


def test_model_stock_matches_formula():
    rs = np.random.RandomState(2)
    base = rs.randn(50)
    common = rs.randn(50)
    xs = [base + common + 0.5 * rs.randn(50) for _ in range(3)]
    out = run("model_stock", [base, *xs], base=0, inputs=[{}, {}, {}, {}])
    np.testing.assert_allclose(out.numpy(), naive.model_stock(base, xs), rtol=1e-10)
    same = run("model_stock", [base, xs[0], xs[0]], base=0, inputs=[{}, {}, {}])
    np.testing.assert_allclose(same.numpy(), xs[0], rtol=1e-10)    # cos = 1 -> t = 1


def test_passthrough_scale():
    x = torch.tensor([1.0, -2.0])
    m = get_method("passthrough")
    assert m.fn([x], None, {}, [{"scale": None}]) is x
    assert m.fn([x], None, {}, [{"scale": 0.5}]).tolist() == [0.5, -1.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masks_are_the_cpu_masks():
    """Counter-based masks are exact integer arithmetic: identical on CUDA and the CPU, whole or in
    CUDA-sized chunks; DARE merges agree to float rounding."""
    st = mask_stream(11, "model.layers.3.self_attn.q_proj.weight", 1)
    n = (1 << 22) + 12345
    for p in (0.3, 0.77):
        assert torch.equal(st.keep(0, n, p, "cuda").cpu(), st.keep(0, n, p))
    assert torch.equal(st.bits((1 << 32) - 9, 20, "cuda").cpu(), st.bits((1 << 32) - 9, 20))
    rs = np.random.RandomState(0)
    base = torch.tensor(rs.randn(512, 300), dtype=torch.float32)
    xs = [base + torch.tensor(rs.randn(512, 300), dtype=torch.float32) for _ in range(3)]
    m = get_method("dare_ties")
    g = {p.name: p.default for p in m.params if p.scope == "global"}
    inp = [{"weight": 0.5, "density": 0.3}, {"weight": 1.0, "density": 0.6}, {"weight": 0.7, "density": 0.9}, {}]
    rng = lambda i: mask_stream(0, "t", i)  # noqa: E731
    cpu = m.fn([*xs, base], 3, g, inp, rng)
    gpu = m.fn([t.cuda() for t in (*xs, base)], 3, g, inp, rng).cpu()
    torch.testing.assert_close(cpu, gpu)
    assert torch.equal(cpu == base, gpu == base)          # the same entries dropped everywhere


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_deterministic_methods():
    rs = np.random.RandomState(0)
    base = torch.tensor(rs.randn(64, 64), dtype=torch.float32)
    xs = [base + torch.tensor(rs.randn(64, 64), dtype=torch.float32) for _ in range(2)]
    m = get_method("ties")
    g = {"normalize": True, "lambda": 1.0, "rescale": False, "int8_mask": False}
    inp = [{}, {"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.6}]
    cpu = m.fn([base, *xs], 0, g, inp, None)
    gpu = m.fn([t.cuda() for t in (base, *xs)], 0, g, inp, None).cpu()
    torch.testing.assert_close(cpu, gpu)


def test_rank_mask_breaks_ties_like_a_stable_sort():
    w = torch.tensor([2.0, 1.0, 2.0, 3.0, 2.0, 0.5])
    stable = torch.sort(w, stable=True).indices.tolist()          # [5, 1, 0, 2, 4, 3]
    for k in range(7):
        top = sp.rank_mask(w, k, largest=True).nonzero().squeeze(1).tolist()
        low = sp.rank_mask(w, k, largest=False).nonzero().squeeze(1).tolist()
        assert sorted(top) == sorted(stable[len(stable) - k:])
        assert sorted(low) == sorted(stable[:k])
    big = torch.randn(100_000, generator=torch.Generator().manual_seed(0)).abs()
    assert torch.equal(sp.rank_mask(big, 777, True).nonzero().squeeze(1),
                       torch.topk(big, 777).indices.sort().values)


@pytest.mark.parametrize("kind", ["normal", "ties", "skewed"])
def test_kth_smallest_is_exact_on_large_tensors(kind):
    g = torch.Generator().manual_seed(0)
    n = 9 * sp._SAMPLE + 17                      # takes the bracketing path
    w = {"normal": torch.randn(n, generator=g).abs(),
         "ties": torch.randint(0, 50, (n,), generator=g).float(),
         "skewed": torch.randn(n, generator=g).exp() ** 4}[kind]
    for j in (1, 2, n // 3, n // 2, n - 5, n):
        assert sp.kth_smallest(w, j) == torch.kthvalue(w, j).values


def test_della_single_column_rows_use_the_lowest_probability():
    col = torch.ones(4000, 1)
    kept = sp.della_magprune(col, 0.5, 0.2, mask_stream(0, "col", 0), rescale=None)
    assert kept.shape == col.shape
    assert abs((kept != 0).float().mean().item() - 0.3) < 0.03     # density - epsilon


TRITON_CHECK = r"""
import warnings
import torch
from evollm.kernels import rng
for start, count, k in [(0, 5000, 3), ((1 << 32) - 1000, 3000, 2), (123457, 1, 1), (7, 70000, 4)]:
    streams = [rng.mask_stream(3, f"t{k}", i, candidate=1) for i in range(k)]
    ref = rng.uniform24_rows(streams, start, count, "cpu")
    out = torch.full((k, count + 5), -1.0)[:, 2:2 + count]          # a strided view, as the kernel's callers pass
    assert torch.equal(rng._uniform24_triton(streams, start, count, out), ref), (start, count)
assert rng._fast("cpu")                                              # the self-check passes
class Idle:                                                          # a kernel that writes nothing
    def __getitem__(self, grid):
        return lambda *a, **k: None
for kernel, says in ((Idle(), "disagrees with the torch ops"), (lambda: None, "is unavailable on cpu")):
    rng._FAST.clear()
    rng._kernel = lambda kernel=kernel: kernel
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert not rng._fast("cpu")                                  # refused: the torch ops serve
    assert any(says in str(x.message) for x in w), [str(x.message) for x in w]
print("ok")
"""


def test_the_cuda_mask_kernel_gives_the_torch_ops_integers():
    """The Triton kernel the masks use on CUDA, run by Triton's interpreter on the CPU: the same uniforms as
    the torch integer ops (across a 2^32 block boundary, into strided rows), and the self-check that guards
    it refuses a kernel that disagrees. On a GPU the same self-check runs once per device before first use."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
