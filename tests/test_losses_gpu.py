"""Losses on a CUDA device (skipped without one; run by benchmarks/gpu_suite.sh): the Triton
kernels against the float64 oracle, bad targets through the device flag, and no host sync on the
default path, checked by torch's own detector (``torch.cuda.set_sync_debug_mode("error")``)."""
from __future__ import annotations

import pytest
import torch

from mmit_fast.losses import BadTargets, WLSEPLoss, bce_loss, lsep_loss, raise_pending, warp_loss, wlsep_loss
from mmit_fast.losses import reference as ref

pytestmark = pytest.mark.gpu
FNS = {"bce": bce_loss, "warp": warp_loss, "lsep": lsep_loss, "wlsep": wlsep_loss}


@pytest.mark.parametrize("C", [292, 4096, 9000])
@pytest.mark.parametrize("name", list(FNS))
def test_triton_on_cuda_matches_reference(name, C):
    g = torch.Generator().manual_seed(C)
    B = 6
    x = torch.randn(B, C, generator=g) * 3
    y = torch.rand(B, C, generator=g) < 3.0 / C
    y[0] = False
    y[1, 0] = True
    w = torch.rand(C, generator=g) + 0.05
    xr = x.double().requires_grad_()
    want = ref.reference_loss(name, xr, y, w, "none")
    want.sum().backward()
    for targets in (y, y.float()):
        xg = x.cuda().requires_grad_()
        got = FNS[name](xg, targets.cuda(), w.cuda(), "none")
        got.sum().backward()
        torch.testing.assert_close(got.double().cpu(), want.detach(), rtol=2e-5, atol=2e-5 * max(1, float(want.abs().max())))
        torch.testing.assert_close(xg.grad.double().cpu(), xr.grad, rtol=2e-5,
                                   atol=2e-5 * max(1, float(xr.grad.abs().max())))


def test_bad_targets_poison_rows_and_raise_later_on_cuda():
    x = torch.randn(4, 50, device="cuda")
    y = torch.zeros(4, 50, device="cuda")
    y[:, 1] = 1.0
    y[2, 33] = 0.5
    rows = wlsep_loss(x, y, reduction="none")  # no raise: that would need a host sync
    assert torch.isnan(rows[2]) and torch.isfinite(rows[[0, 1, 3]]).all()
    with pytest.raises(BadTargets, match=r"targets\[2, 33\]"):
        raise_pending()
    raise_pending()


def test_default_path_has_no_host_sync_on_cuda():
    crit = WLSEPLoss(weights=torch.rand(292) + 0.1).cuda()
    x = torch.randn(64, 292, device="cuda")
    y = (torch.rand(64, 292, device="cuda") < 0.01).float()
    y[:, 0] = 1.0
    crit(x.clone().requires_grad_(), y).backward()  # compile / warm up first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            xg = x.clone().requires_grad_()
            crit(xg, y).backward()
            wlsep_loss(xg.half(), y > 0, normalize="pair").backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
