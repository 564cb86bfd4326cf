"""The exact streaming quantile of dissection's thresholds against np.percentile, bit for bit, on the
cases a histogram gets wrong: one extreme outlier, heavy tails, units that are mostly zero after a
ReLU (the rank among the zeros, or just above them), constant units, negatives and denormals."""
import numpy as np
import pytest
import torch

from mmit_fast.interpret.quantile import ExactQuantile, order_keys

BACKENDS = ["torch", "cpp"]


def _units(rng, n=3000):
    """One row per hard case."""
    x = rng.normal(size=(10, n)).astype(np.float32)
    x[0, 17] = 1000 * np.abs(x[0]).max()                       # issue 18's case: one 1000x outlier
    x[1] = rng.standard_cauchy(n)                              # heavy tails both ways
    x[2] = rng.pareto(0.7, n) * 1e3                            # heavier still, positive
    x[3] = np.maximum(x[3], 0)
    x[3, : int(0.997 * n)] = 0                                 # sparse: the top-0.5% rank falls among the zeros
    x[4] = np.where(rng.random(n) < 0.99, 0, rng.exponential(size=n))   # sparse: the rank just above the zeros
    x[5] = 3.25                                                # constant
    x[6] = 0.0                                                 # dead unit
    x[6, ::7] = -0.0
    x[7] = -np.abs(x[7])                                       # all negative
    x[8, ::2] = 1e-40                                          # denormals next to zeros
    x[8, 1::2] = 0
    x[9] = np.round(x[9] * 4) / 4                              # many ties
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q", [0.005, 0.05, 0.5, 0.0, 1.0])
@pytest.mark.parametrize("cap", [4096, 2])
def test_exact_quantile_equals_np_percentile(backend, q, cap):
    """Every unit's threshold has the bits of np.percentile(values_k, 100 (1 - q)) in float64, whether
    the bins are collected (cap 4096) or counted down to the last bit (cap 2: three levels)."""
    x = _units(np.random.default_rng(0))
    K = x.shape[0]
    parts = np.array_split(x, 5, axis=1)                       # maps [B, K, S] in several batches
    eq = ExactQuantile(K, cap=cap)
    for p in parts:
        eq.update_maps(torch.from_numpy(np.ascontiguousarray(p.T.reshape(-1, 1, K).transpose(0, 2, 1))), backend=backend)
    passes = []

    def read():
        passes.append(1)
        return (torch.from_numpy(np.ascontiguousarray(p.T.reshape(-1, 1, K).transpose(0, 2, 1))) for p in parts[::-1])

    t = eq.run(q, read, backend=backend)
    ref = np.percentile(x.astype(np.float64), 100 * (1 - q), axis=1)
    assert t.dtype == torch.float64
    assert np.array_equal(t.numpy(), ref), np.abs(t.numpy() - ref).max()
    assert len(passes) <= 2                                    # at most two refinement passes, ever


def test_outlier_mask_size_is_the_exact_one():
    """Issue 18's reproduction: with one 1000x outlier, the top-0.5% threshold leaves exactly the
    values np.percentile's leaves above it (a histogram of equal bins left a third of them)."""
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, size=(1, 20000)).astype(np.float32)
    x[0, 5] = 1000 * x.max()
    eq = ExactQuantile(1)
    eq.update(torch.from_numpy(x))
    t = float(eq.run(0.005, lambda: iter([torch.from_numpy(x)[None]]))[0])
    ref = np.percentile(x[0].astype(np.float64), 99.5)
    assert t == ref and int((x[0] > t).sum()) == int((x[0] > ref).sum()) == 100


def test_backends_count_alike_and_keys_order_like_values():
    rng = np.random.default_rng(2)
    v = np.concatenate([(rng.normal(size=1000) * 10.0 ** rng.integers(-30, 30, 1000)).astype(np.float32),
                        np.float32([0.0, -0.0, 1e-45, -1e-45, np.finfo(np.float32).max, -np.finfo(np.float32).max])])
    k = order_keys(torch.from_numpy(v)).numpy()
    assert (np.diff(v[np.argsort(k)]) >= 0).all() and len(np.unique(k)) == len(np.unique(v)) + 1   # -0 < +0
    assert (k >= 0).all() and (k < 2 ** 32).all()
    maps = torch.from_numpy(_units(rng, 600).T.reshape(-1, 10, 2, 3).copy())
    a, b = ExactQuantile(10), ExactQuantile(10)
    a.update_maps(maps, backend="cpp", threads=2)
    b.update_maps(maps, backend="torch")
    assert torch.equal(a.counts, b.counts) and torch.equal(a.zeros, b.zeros) and a.n == b.n == 600


def test_non_finite_values_and_misuse_are_named_errors():
    for backend in BACKENDS:
        bad = torch.ones(2, 4, 3, 3)
        bad[1, 2, 2, 0] = float("nan")
        bad[0, 1, 0, 0] = float("-inf")
        with pytest.raises(ValueError, match=r"2 non-finite activation value\(s\)"):
            ExactQuantile(4).update_maps(bad, backend=backend)
    with pytest.raises(ValueError, match=r"expected maps \[B, 4, ...\]"):
        ExactQuantile(4).update_maps(torch.ones(2, 3, 3, 3))
    with pytest.raises(ValueError, match="no values seen"):
        ExactQuantile(4).select(0.1)
    eq = ExactQuantile(1, cap=1)
    x = torch.arange(100, dtype=torch.float32)[None]
    eq.update(x)
    eq.select(0.5)
    eq.refine(x[:, :50])                                        # a pass over other data than pass 1
    with pytest.raises(RuntimeError, match="other values than pass 1"):
        eq.end_pass()
    with pytest.raises(RuntimeError, match="pass 1 is over"):
        eq.update(x)


def test_memory_does_not_grow_with_data():
    eq = ExactQuantile(3)
    before = eq.counts.numel()
    for _ in range(5):
        eq.update(torch.rand(3, 10_000) * 100)
    assert eq.counts.numel() == before and eq.n == 50_000
