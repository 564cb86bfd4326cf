"""Our Grad-CAM against the independent implementation users run: pytorch-grad-cam (``grad-cam``).

Both take the same model, layer, clip and classes. The peer returns maps already resized to
the input and min-max normalised by its own steps (``scale_cam_image``: normalise, resize with
``cv2.resize`` in 2D or ``scipy.ndimage.zoom`` in 3D; then clip at 0 and normalise again), ours
returns the raw map at the layer's resolution: our raw map put through the peer's own steps must
equal the peer's output within 1e-5 (float32 rounding), for a 2D ResNet and a 3D I3D, at two
layers each. In 2D the peer's bilinear resize equals our upsampling too (within 1e-4)."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import _gradcam_peer as peer  # noqa: E402

from mmit_fast.interpret.cam import normalise_maps, upsample_maps  # noqa: E402
from mmit_fast.interpret.gradcam import GradCAM  # noqa: E402

try:
    peer.load()
    HAVE_PEER = None
except ImportError as e:
    HAVE_PEER = f"grad-cam not installed (pip install grad-cam; it is in the [test] extra): {e}"


def _peer_steps(raw, size):
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(np.maximum(scale_cam_image(raw, size), 0))


@pytest.mark.skipif(HAVE_PEER is not None, reason=str(HAVE_PEER))
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_gradcam_3d_equals_pytorch_grad_cam(layer):
    from mmit_fast.models import create_model

    torch.manual_seed(0)
    m = create_model("i3d", 6, depth=18, width=4, conv1_t=1, last_stride=1).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    ids = torch.tensor([[1, 4]])
    theirs = peer.peer_gradcam(m, x, ids, layer)
    with GradCAM(m, layer) as gc:
        ours = gc(x, ids)[0].detach().numpy()
    assert ours.shape == (2, 2, 4, 4) and theirs.shape == (2, 8, 64, 64)
    assert ours.max() > 0 and theirs.max() > 0                # not trivially empty maps
    np.testing.assert_allclose(_peer_steps(ours, (64, 64, 8)), theirs, atol=1e-5)


@pytest.mark.skipif(HAVE_PEER is not None, reason=str(HAVE_PEER))
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_gradcam_2d_equals_pytorch_grad_cam(layer):
    from mmit_fast.models.resnet2d import ResNet2d

    torch.manual_seed(1)
    m = ResNet2d(18, num_classes=6, width=8).eval()
    x = torch.randn(1, 3, 96, 96)
    ids = torch.tensor([[0, 3]])
    theirs = peer.peer_gradcam(m, x, ids, layer)
    with GradCAM(m, layer) as gc:
        raw = gc(x, ids)
    ours = raw[0].detach().numpy()
    np.testing.assert_allclose(_peer_steps(ours, (96, 96)), theirs, atol=1e-5)
    # our own upsampling (torch bilinear, half-pixel centres) equals cv2's resize here
    up = normalise_maps(upsample_maps(raw, (96, 96)))[0].numpy()
    np.testing.assert_allclose(up, theirs, atol=1e-4)
