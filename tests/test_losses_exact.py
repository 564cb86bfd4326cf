"""Losses, issue 10: the numerical defects, in-kernel target validation, and no host sync.

Oracles: the float64 pairwise reference (``mmit_fast.losses.reference``), and for the
no-sync property a count of every Python-level way to read a tensor's value on the host.
"""
from __future__ import annotations

import pytest
import torch

from mmit_fast.losses import (BadTargets, WLSEPLoss, bce_loss, get_loss, lsep_loss, raise_pending, warp_loss,
                              wlsep_loss)
from mmit_fast.losses import errors
from mmit_fast.losses import reference as ref

pytestmark = [pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

FNS = {"bce": bce_loss, "warp": warp_loss, "lsep": lsep_loss, "wlsep": wlsep_loss}
BACKENDS = ["torch", "cpp", "triton"]


def close(got, want, rtol, what):
    got, want = got.detach().double(), want.detach().double()
    atol = rtol * max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def ref_grad(name, x, y, w, reduction="mean", scale=1.0):
    xr = x.double().requires_grad_()
    out = ref.reference_loss(name, xr, y, w, reduction)
    (out.sum() * scale).backward()
    return out.detach(), xr.grad


# ------------------------------------------------------------------ LSEP: a weight-0 positive far below
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gap", [50.0, 90.0, 200.0, 1e4])
def test_lsep_zero_weight_positive_far_below_is_finite_and_exact(backend, gap):
    """Row 0: positives at 0 (weight 1) and 1 (weight 0, `gap` below); its exp(-x_1 - B) would
    overflow for gap >~ 88 if evaluated, and 0 * inf = NaN (the C++ kernel did that)."""
    g = torch.Generator().manual_seed(1)
    C = 40
    x = torch.randn(3, C, generator=g)
    y = torch.zeros(3, C, dtype=torch.bool)
    y[:, 0] = y[:, 1] = True
    x[:, 1] = x[:, 0] - gap
    w = torch.ones(C)
    w[1] = 0.0
    want_rows, want_grad = ref_grad("lsep", x, y, w, "none")
    xg = x.clone().requires_grad_()
    rows = lsep_loss(xg, y, w, "none", backend=backend)
    rows.sum().backward()
    assert torch.isfinite(rows).all() and torch.isfinite(xg.grad).all(), f"{backend}: NaN/Inf at gap {gap}"
    close(rows, want_rows, 2e-5, f"lsep/{backend} loss")
    close(xg.grad, want_grad, 2e-5, f"lsep/{backend} grad")
    assert (xg.grad[:, 1] == 0).all(), "a weight-0 positive gets no gradient"


# ------------------------------------------------------------------ fp16 under a GradScaler-sized scale
@pytest.mark.parametrize("backend,reduction", [(b, r) for b in BACKENDS for r in ("mean", "sum", "none")
                                               if not (b == "triton" and r == "sum")])  # sum = mean's code path
@pytest.mark.parametrize("name", list(FNS))
def test_fp16_grad_scaler_scale_is_finite_and_exact(name, reduction, backend):
    """loss * 65536 (GradScaler's default scale) with float16 logits: 65536 itself is inf in
    float16, and gradient entries ~1e-8 flush to 0 in float16 before the scale -- the backward
    must multiply in float32 and cast once."""
    g = torch.Generator().manual_seed(3)
    B, C = 32, 40
    x = (torch.randn(B, C, generator=g) * 2).half()
    x[:, 10:20] -= 12.0  # negatives far below: their gradients are ~1e-8 before the scale
    y = torch.zeros(B, C, dtype=torch.bool)
    y[:, 0] = True
    y[torch.arange(B), torch.randint(1, C, (B,), generator=g)] = True
    S = 65536.0 if reduction == "mean" else 65536.0 / B  # 'sum'/'none': B times larger gradients
    _, want = ref_grad(name, x, y, None, reduction, S)
    xg = x.clone().requires_grad_()
    out = FNS[name](xg, y, None, reduction, backend=backend)
    (out.sum() * S).backward() if reduction == "none" else (out * S).backward()
    got = xg.grad
    assert got.dtype == torch.float16
    want16 = want.to(torch.float16).double()  # an exact gradient cast once (inf only where it truly overflows)
    fin = torch.isfinite(want16)
    assert fin.float().mean() > 0.5, "the case must mostly fit float16 after the scale"
    assert torch.equal(torch.isfinite(got), fin), f"{name}/{backend}/{reduction}: inf/NaN gradient under the scale"
    close(got[fin], want16[fin], 2e-3, f"{name}/{backend}/{reduction} scaled fp16 grad")
    small = (want.abs() > 1e-6) & (want.abs() < 1e-3)  # tiny before the scale, normal after it
    if small.any():
        assert (got[small] != 0).all(), "small gradient entries flushed to zero before the scale"


def test_grad_scaler_step_is_finite_cpu():
    """The real torch.amp.GradScaler on CPU: scale, backward, unscale -- finite, no skipped step."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(16, 30)  # float32 master weights, float16 logits (as under autocast)
    opt = torch.optim.SGD(lin.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    x = torch.randn(8, 16, generator=g)
    y = torch.rand(8, 30, generator=g) < 0.1
    y[:, 0] = True
    for name, fn in FNS.items():
        if name == "warp":  # its gradients are rank-sized (-c_i R_i ~ 10 here): x 65536 truly overflows
            continue        # float16, and the scaler backs off as designed
        opt.zero_grad()
        loss = fn(lin(x).half(), y.float())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        assert all(torch.isfinite(p.grad).all() for p in lin.parameters()), name
        scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() == 65536.0, f"{name}: the scaler saw inf/NaN and skipped the step"


# ------------------------------------------------------------------ second backward (retain_graph)
@pytest.mark.parametrize("backend", BACKENDS)
def test_retain_graph_second_backward_recomputes(backend):
    """backward scales the stored gradient in place and hands it out; a second backward must
    not reuse it (it may be x.grad by now): 2.5 * g + 0.5 * g."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 30, generator=g)
    y = torch.rand(5, 30, generator=g) < 0.2
    y[:, 0] = True
    _, want = ref_grad("wlsep", x, y, None)
    xg = x.clone().requires_grad_()
    out = wlsep_loss(xg, y, backend=backend)
    out.backward(torch.tensor(2.5), retain_graph=True)
    close(xg.grad, 2.5 * want, 2e-5, "first backward")
    out.backward(torch.tensor(0.5))
    close(xg.grad, 3.0 * want, 2e-5, "second backward")


# ------------------------------------------------------------------ targets validated in the kernels
BAD_TARGETS = [
    (torch.float32, 0.5), (torch.float32, 2.0), (torch.float32, float("nan")), (torch.float32, -1.0),
    (torch.float64, 0.25), (torch.uint8, 2), (torch.int64, 3), (torch.float16, 0.5),
]


# the interpreter is slow: Triton gets one case per way a kernel reads targets (float, bytes, converted)
BAD_CASES = [(b, d, v) for b in ("torch", "cpp") for d, v in BAD_TARGETS] + \
    [("triton", d, v) for d, v in BAD_TARGETS if (d, v) in ((torch.float32, 0.5), (torch.float32, float("nan")),
                                                           (torch.uint8, 2), (torch.int64, 3))]


@pytest.mark.parametrize("backend,dtype,value", BAD_CASES)
def test_bad_target_values_raise_named_value_error(dtype, value, backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, generator=g)
    y = (torch.rand(6, 40, generator=g) < 0.1).to(dtype)
    y[4, 17] = value
    y[5, 3] = value  # a later row: the first bad element (row-major) is named
    shown = "nan" if value != value else f"{value:g}" if dtype.is_floating_point else str(value)
    for name, fn in FNS.items():
        with pytest.raises(ValueError, match=rf"^{name}_loss: targets must be multi-hot \(0 or 1\); "
                                             rf"targets\[4, 17\] = {shown}$"):
            fn(x.clone().requires_grad_(), y, None, backend=backend)
    with pytest.raises(BadTargets, match=r"^WLSEPLoss: .*targets\[4, 17\]"):  # the module: its own name
        get_loss("wlsep", backend=backend)(x, y)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_bad_target_in_multi_block_rows(backend):
    """C = 9000 > one Triton block: the check sits in the first pass of the column loop."""
    x = torch.randn(2, 9000)
    y = torch.zeros(2, 9000)
    y[:, 5] = 1.0
    y[1, 8765] = 0.5
    for name, fn in FNS.items():
        with pytest.raises(ValueError, match=r"targets\[1, 8765\] = 0.5"):
            fn(x, y, None, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gpu_style_lazy_flag_poisons_rows_and_raises_later(backend, monkeypatch):
    """The CUDA branch, taken on CPU: no raise during the call, the bad row's loss and gradient
    are NaN, the other rows are exact, and raise_pending() names the element once."""
    monkeypatch.setattr(errors, "lazy_errors", lambda device: True)
    errors._FLAGS.clear()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 40, generator=g)
    y = (torch.rand(4, 40, generator=g) < 0.1).float()
    y[:, 0] = 1.0
    y[2, 7] = 0.3
    for name, fn in FNS.items():
        xg = x.clone().requires_grad_()
        rows = fn(xg, y, None, "none", backend=backend)
        rows.sum().backward()
        assert torch.isnan(rows[2]) and torch.isnan(xg.grad[2]).all(), name
        good = [0, 1, 3]
        want_rows, want_grad = ref_grad(name, x[good], y[good], None, "none")
        close(rows[good], want_rows, 2e-5, f"{name} good rows")
        close(xg.grad[good], want_grad, 2e-5, f"{name} good rows' grad")
        with pytest.raises(BadTargets, match=r"targets\[2, 7\] \(found on cpu by an earlier loss call"):
            raise_pending()
        raise_pending()  # the flag was reset


# ------------------------------------------------------------------ the default path never syncs
class SyncCounter:
    """Counts every Python-level read of a tensor value on the host (each a device sync on CUDA)."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero", "cpu", "numpy")

    def __init__(self, monkeypatch, allow=()):
        self.calls = []
        for n in self.NAMES:
            if n in allow:
                continue
            real = getattr(torch.Tensor, n)
            monkeypatch.setattr(torch.Tensor, n, self._wrap(n, real))
        real_equal = torch.equal
        monkeypatch.setattr(torch, "equal", lambda *a, **k: (self.calls.append("torch.equal"), real_equal(*a, **k))[1])

    def _wrap(self, n, real):
        def f(t, *a, **k):
            self.calls.append(n)
            return real(t, *a, **k)
        return f


def _short_run(crit_or_fn, x, y, steps=3):
    for _ in range(steps):
        xg = x.clone().requires_grad_()
        loss = crit_or_fn(xg, y)
        loss.backward()
    return xg.grad


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_default_path_never_syncs(backend, monkeypatch):
    """A few fwd+bwd steps of the module (class weights, float targets, mean) and of the
    functional forms (bool targets, normalize='pair', reduction 'sum', grad_output != 1): not one
    host read of a tensor value. The CUDA branch of the error flag is taken (as on a GPU);
    the Triton kernels run under the interpreter, the torch path as it runs on CUDA."""
    monkeypatch.setattr(errors, "lazy_errors", lambda device: True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 32, generator=g)
    y = (torch.rand(8, 32, generator=g) < 0.1).float()
    y[:, 0] = 1.0
    crit = WLSEPLoss(weights=torch.rand(32, generator=g) + 0.1, backend=backend)
    runs = [crit, lambda a, b: lsep_loss(a, b > 0, backend=backend),
            lambda a, b: wlsep_loss(a, b, normalize="pair", backend=backend),
            lambda a, b: warp_loss(a, b, reduction="sum", backend=backend) * 3.0,
            lambda a, b: bce_loss(a.half(), b, backend=backend)]
    counter = SyncCounter(monkeypatch, allow=("numpy",) if backend == "cpp" else ())
    for run in runs:
        _short_run(run, x, y, steps=2)
    assert counter.calls == [], f"host reads of tensor values: {counter.calls}"


def test_cpp_default_path_never_reads_tensor_values(monkeypatch):
    """The C++ path (the CPU default): the kernel reads its buffers through their data pointers
    (CPU memory); no Python-level read of a value, no extra pass."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(16, 64, generator=g)
    y = (torch.rand(16, 64, generator=g) < 0.05).float()
    y[:, 0] = 1.0
    crit = WLSEPLoss(weights=torch.rand(64, generator=g) + 0.1)
    counter = SyncCounter(monkeypatch, allow=("numpy",))
    _short_run(crit, x, y)
    _short_run(lambda a, b: wlsep_loss(a, b, normalize="pair"), x, y)
    assert counter.calls == []


# ------------------------------------------------------------------ the C++ per-call path (data pointers)
@pytest.mark.parametrize("name", list(FNS))
def test_cpp_reads_tensors_as_they_are_and_reduces_in_the_kernel(name):
    """The C++ path hands tensors to the kernel by data pointer: a transposed (non-contiguous)
    logits view, negative-bit views of logits and float targets, a sliced batch (storage
    offset), class weights, and the 'mean'/'sum' reduced in the kernel call all agree with the
    float64 reference; the inputs are not written to."""
    from mmit_fast.losses import _cpp
    if not _cpp.available():
        pytest.skip("mmit_fast._C is not built")
    g = torch.Generator().manual_seed(11)
    B, C = 7, 37
    base = torch.randn(C, B + 2, generator=g) * 3
    xt = base.t()[1:B + 1]                       # non-contiguous, storage offset
    y = (torch.rand(B, C, generator=g) < 0.15).float()
    y[:, 3] = 1.0
    w = torch.rand(C, generator=g) + 0.1
    yneg = torch._neg_view(-y)                   # -(-y) = y, negative bit set
    snap_x, snap_y = xt.clone(), y.clone()
    for reduction, scale in (("mean", 1.0), ("sum", 1.0), ("mean", 2.5)):
        want, want_g = ref_grad(name, xt, y > 0, w, reduction, scale)
        for neg, yin in ((False, y), (True, yneg)):
            leaf = xt.detach().clone().requires_grad_()
            src = torch._neg_view(-leaf) if neg else leaf.t().contiguous().t()  # neg-bit view / strided
            assert src.is_neg() if neg else not src.is_contiguous()
            out = FNS[name](src, yin, w, reduction, backend="cpp")
            assert out.dim() == 0 and out.dtype == torch.float32
            (out * scale).backward()
            close(out, want, 2e-5, f"{name}/{reduction} loss")
            close(leaf.grad, want_g, 2e-5, f"{name}/{reduction} grad")
    assert torch.equal(xt, snap_x) and torch.equal(y, snap_y)
