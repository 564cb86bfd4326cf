"""A training step does not wait on the host: outside the log interval, no micro-batch and no
optimiser step reads a tensor value on the host (``Tensor.item``, ``tolist``, ``bool()``,
``float()``, ``int()``), and a log step reads once (loss, counts and grad norm together).

On a GPU each such read is a device synchronisation; on this CPU machine the same calls are
counted. SGD (its step reads nothing; AdamW is fused on CUDA).
"""
import collections

import pytest
import torch

from mmit_fast.train import loop
from train_helpers import tiny_cfg, tiny_dataset

READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@pytest.fixture
def counted(monkeypatch):
    """Count host reads by phase: ('micro', step) inside micro_step, ('after', step) inside
    after_step (optimiser step, log row, checkpoint)."""
    phase = [None]
    counts = collections.Counter()
    for name in READS:
        orig = getattr(torch.Tensor, name)

        def read(self, *a, _orig=orig, **k):
            if phase[0] is not None:
                counts[phase[0]] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, read)

    def traced(kind, fn):
        def f(run, *a, **k):
            phase[0] = (kind, run.step + 1)
            try:
                return fn(run, *a, **k)
            finally:
                phase[0] = None
        return f

    monkeypatch.setattr(loop, "micro_step", traced("micro", loop.micro_step))
    monkeypatch.setattr(loop, "after_step", traced("after", loop.after_step))
    return counts


def test_no_host_sync_outside_the_log_interval(counted, tmp_path):
    cfg = tiny_cfg(tiny_dataset(), tmp_path / "run", epochs=1, accum_steps=1, log_every=3, val_split="",
                   grad_clip=0.0)
    loop.train(cfg)
    steps = range(1, 7)  # 12 videos / batch 2
    assert sum(counted[("micro", s)] for s in steps) == 0, dict(counted)
    assert [counted[("after", s)] for s in steps] == [0, 0, 1, 0, 0, 1], dict(counted)


def test_grad_clipping_adds_no_sync(counted, tmp_path):
    loop.train(tiny_cfg(tiny_dataset(), tmp_path / "run", epochs=1, accum_steps=2, log_every=2, val_split="",
                        grad_clip=1.0))
    steps = range(1, 4)
    assert sum(counted[("micro", s)] for s in steps) == 0, dict(counted)
    assert [counted[("after", s)] for s in steps] == [0, 1, 1], dict(counted)  # step 3: the last (logged)
