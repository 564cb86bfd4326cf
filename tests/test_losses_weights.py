"""Class-weight schemes against their formulas worked by hand, and wLSEP's per-(sample,
positive)-pair reduction against a literal loop, on every backend.

Oracles: the formulas of ``mmit_fast/losses/weights.py`` evaluated here with Python's
``math`` on each count in turn (no numpy, no vectorised path); the pair reduction as the
authors' code defines it -- every (sample, positive) pair of the batch contributes
``w_i log(1 + sum_{j negative} exp(x_j - x_i))`` (0 when its row has no negative) and the
batch loss is their mean -- written as nested Python loops over float64 scalars, with
autograd through the loop for the gradient.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmit_fast.losses import SCHEMES, class_weights, get_loss, wlsep_loss
from mmit_fast.losses.weights import DEFAULT_WLSEP_SCHEME, parse_scheme

pytestmark = [pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

COUNTS = [10, 40, 5, 1000, 5, 0, 73]   # class 5 never seen in training; the rarest seen class has 5


def _close(got, want, rtol=1e-6):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=rtol, atol=1e-12)


# ------------------------------------------------------------------ each scheme by hand
def test_none_is_all_ones_even_for_unseen_classes():
    assert torch.equal(class_weights(COUNTS, "none"), torch.ones(7))
    assert torch.equal(class_weights(COUNTS, "none", zero="max"), torch.ones(7))


def test_min_ratio_by_hand():
    want = [5 / 10, 5 / 40, 5 / 5, 5 / 1000, 5 / 5, 0.0, 5 / 73]
    _close(class_weights(COUNTS, "min_ratio"), want)
    _close(class_weights(COUNTS, "min_ratio", zero="max"), want[:5] + [1.0] + want[6:])


def test_tempered_by_hand():
    for p in (0.5, 0.25, 2.0):
        want = [(5 / 10) ** p, (5 / 40) ** p, 1.0, (5 / 1000) ** p, 1.0, 0.0, (5 / 73) ** p]
        _close(class_weights(COUNTS, "tempered", power=p), want)
        _close(class_weights(COUNTS, f"tempered:{p}"), want)           # the parameter in the name
    _close(class_weights(COUNTS, "tempered", power=1.0), class_weights(COUNTS, "min_ratio"))
    _close(class_weights(COUNTS, "tempered", power=0.0)[[0, 1, 2, 3, 4, 6]], [1.0] * 6)


def _effective_by_hand(counts, beta):
    """Cui et al. 2019: v = (1 - beta) / (1 - beta^n); normalised to sum to the number of seen classes."""
    seen = [n for n in counts if n > 0]
    v = {n: (1 - beta) / (1 - beta ** n) for n in seen}
    total = sum(v[n] for n in seen)
    return [len(seen) * v[n] / total if n > 0 else 0.0 for n in counts]


def test_effective_number_by_hand():
    for beta in (0.9, 0.99, 0.999, 0.9999):
        want = _effective_by_hand(COUNTS, beta)
        got = class_weights(COUNTS, "effective_number", beta=beta)
        _close(got, want)
        _close(class_weights(COUNTS, f"effective_number:{beta}"), want)
        assert math.isclose(float(got.double().sum()), 6.0, rel_tol=1e-6)  # mean 1 over the 6 seen classes
        zmax = class_weights(COUNTS, "effective_number", beta=beta, zero="max")
        assert float(zmax[5]) == pytest.approx(max(want)) and float(zmax[2]) == pytest.approx(want[2])
    # small worked case: counts 1 and 2 at beta = 0.5 -> v = 1, 2/3 -> w = 2*(1, 2/3)/(5/3) = 1.2, 0.8
    _close(class_weights([1, 2], "effective_number", beta=0.5), [1.2, 0.8])
    # the default beta is 0.999
    _close(class_weights(COUNTS, "effective_number"), _effective_by_hand(COUNTS, 0.999))


def test_effective_number_limits():
    # beta = 0: every seen class weighs 1 (no reweighting); beta -> 1: inverse frequency
    _close(class_weights(COUNTS, "effective_number", beta=0.0), [1, 1, 1, 1, 1, 0, 1])
    w = class_weights(COUNTS, "effective_number", beta=1 - 1e-9).double()
    _close(w / w[2], class_weights(COUNTS, "min_ratio").double(), rtol=1e-5)
    # huge counts near beta = 1: no cancellation, no underflow (1 - beta^n via expm1)
    big = class_weights([10 ** 6, 10 ** 7, 3], "effective_number", beta=0.99999)
    want = _effective_by_hand([10 ** 6, 10 ** 7, 3], 0.99999)
    _close(big, want, rtol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_unseen_classes_change_nothing_else(scheme):
    """The minimum and the normalisation run over the seen classes only."""
    seen = [c for c in COUNTS if c > 0]
    w_all = class_weights(COUNTS, scheme)
    w_seen = class_weights(seen, scheme)
    _close(w_all[[i for i, c in enumerate(COUNTS) if c > 0]], w_seen)
    assert torch.equal(class_weights([0, 0, 0], scheme), torch.ones(3))   # nothing seen: all ones


def test_scheme_names_and_bad_values():
    assert parse_scheme("min_ratio") == ("min_ratio", {})
    assert parse_scheme("tempered:0.25") == ("tempered", {"power": 0.25})
    assert parse_scheme("effective_number:0.99") == ("effective_number", {"beta": 0.99})
    assert DEFAULT_WLSEP_SCHEME.partition(":")[0] in SCHEMES
    for bad, msg in (("inverse", "unknown scheme"), ("min_ratio:2", "takes no parameter"),
                     ("tempered:abc", "not a number"), ("none:1", "takes no parameter")):
        with pytest.raises(ValueError, match=msg):
            class_weights(COUNTS, bad)
    for kw, msg in (({"beta": 1.0}, "beta"), ({"beta": -0.1}, "beta"), ({"power": -1.0}, "power"),
                    ({"zero": "one"}, "zero")):
        with pytest.raises(ValueError, match=msg):
            class_weights(COUNTS, "effective_number" if "beta" in kw else "tempered", **kw)
    for bad, msg in (([1, -2], ">= 0"), ([], "non-empty"), ([[1, 2]], "1-D"), ([1, float("nan")], "NaN")):
        with pytest.raises(ValueError, match=msg):
            class_weights(bad)
    w = class_weights(COUNTS, "tempered")
    assert torch.equal(class_weights(torch.tensor(COUNTS), "tempered"), w)
    assert torch.equal(class_weights(dict(enumerate(COUNTS)), "tempered"), w)
    assert w.dtype == torch.float32 and class_weights(COUNTS, dtype=torch.float64).dtype == torch.float64


# ------------------------------------------------------------------ the pair reduction, literally
def _pair_loop(x: torch.Tensor, y: torch.Tensor, w) -> torch.Tensor:
    """Mean over every (sample, positive) pair of w_i * log(1 + sum_{j neg} exp(x_j - x_i))."""
    terms = []
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            if not y[b, i]:
                continue
            s = torch.zeros((), dtype=torch.float64)
            for j in range(x.shape[1]):
                if not y[b, j]:
                    s = s + torch.exp(x[b, j] - x[b, i])
            wi = 1.0 if w is None else float(w[i])
            terms.append(wi * torch.log1p(s))
    if not terms:
        return x.sum() * 0.0
    return torch.stack(terms).sum() / len(terms)


def _row_sums_loop(x, y, w):
    rows = []
    for b in range(x.shape[0]):
        rows.append(_pair_loop(x[b:b + 1], y[b:b + 1], w) * max(int(y[b].sum()), 1))
    return torch.stack(rows)


def _case(seed=3, B=6, C=9):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, C, generator=g, dtype=torch.float64) * 2.5).float().double()  # exact in float32
    y = torch.rand(B, C, generator=g) < 0.35
    y[0] = False                      # no positive: no pair
    y[1] = True                       # no negative: its pairs count, each with loss 0
    y[2] = False
    y[2, 4] = True                    # one positive
    w = class_weights([7, 0, 3, 12, 3, 50, 9, 4, 20][:C], "tempered")   # weight 0 for class 1
    return x, y, w


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_pair_reduction_equals_literal_loop(backend):
    x, y, w = _case()
    assert int(y[1].sum()) == y.shape[1]
    for weights in (None, w):
        xr = x.clone().requires_grad_()
        want = _pair_loop(xr, y, weights)
        want.backward()
        xg = x.float().requires_grad_()
        got = wlsep_loss(xg, y, weights, "mean", "pair", backend=backend)
        (got * 3.0).backward()       # a grad_output that is not 1
        torch.testing.assert_close(got.double(), want.detach(), rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(xg.grad.double(), 3.0 * xr.grad, rtol=2e-5, atol=2e-6)
        # 'sum' and 'none' drop the pair count: the per-row sums over positives
        rows = _row_sums_loop(x, y, weights)
        torch.testing.assert_close(wlsep_loss(x.float(), y, weights, "none", "pair", backend=backend).double(),
                                   rows.detach(), rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(wlsep_loss(x.float(), y, weights, "sum", "pair", backend=backend).double(),
                                   rows.sum().detach(), rtol=2e-5, atol=2e-6)
    # the module form, float targets (what a loader yields)
    crit = get_loss("wlsep", weights=w, normalize="pair", backend=backend)
    torch.testing.assert_close(crit(x.float(), y.float()).double(), _pair_loop(x, y, w).detach(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_pair_and_row_reductions_differ_as_defined(backend):
    """Row: mean over rows of (1/|Y|) sum_Y; pair: sum over all pairs / number of pairs. They
    agree when every row has the same number of positives, and not otherwise."""
    x, y, w = _case(seed=5)
    got_pair = wlsep_loss(x.float(), y, w, "mean", "pair", backend=backend)
    got_row = wlsep_loss(x.float(), y, w, "mean", "row", backend=backend)
    rows = _row_sums_loop(x, y, w)
    npos = y.sum(1).clamp_min(1).double()
    torch.testing.assert_close(got_row.double(), (rows / npos).mean().detach(), rtol=2e-5, atol=2e-6)
    assert abs(float(got_pair) - float(got_row)) > 1e-3
    same = torch.zeros_like(y)
    same[:, :2] = True                                   # two positives in every row
    a = wlsep_loss(x.float(), same, w, "mean", "pair", backend=backend)
    b = wlsep_loss(x.float(), same, w, "mean", "row", backend=backend)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_pair_reduction_with_no_positive_at_all():
    x = torch.randn(3, 5)
    for backend in ("torch", "cpp", "triton"):
        xg = x.clone().requires_grad_()
        out = wlsep_loss(xg, torch.zeros(3, 5, dtype=torch.bool), None, "mean", "pair", backend=backend)
        out.backward()
        assert float(out.detach()) == 0.0 and torch.equal(xg.grad, torch.zeros(3, 5))
