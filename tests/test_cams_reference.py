"""lficam.cams against pytorch-grad-cam (grad-cam 1.5, test-only reference) on a random torchvision ResNet-18.

Same model (seeded random weights, eval mode), same images and classes. The raw maps, at the target layer's
resolution, are compared value by value where both compute the same formula; the final maps (ours: torch
bilinear upsampling, then min-max; theirs: min-max, then cv2 resizing) by Pearson and Spearman correlation
over pixels. Run with ``-s`` to see the measured agreements.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from scipy.stats import spearmanr

from lficam import cams

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

# ours → theirs; Score-CAM's C_k is the class probability, hence their softmax target.
PAIRS = {
    "gradcam": pgc.GradCAM,
    "gradcampp": pgc.GradCAMPlusPlus,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
    "scorecam": pgc.ScoreCAM,
}


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    # A random ResNet's logits are ~1e-2 and its gradients at layer4 ~1e-4, where the eps = 1e-6 that
    # pytorch-grad-cam adds to Grad-CAM++'s denominator (method.md has none) dominates g². Scaling the
    # classifier to a trained network's logit range makes that eps negligible, as it is in practice.
    with torch.no_grad():
        net.fc.weight.mul_(1000)
        net.fc.bias.mul_(1000)
    return net


def agreement(ours: torch.Tensor, theirs: np.ndarray) -> tuple[float, float]:
    """The lowest Pearson and Spearman correlation over the images of a batch (pixels as samples)."""
    a = ours.flatten(1).double()
    b = torch.from_numpy(np.ascontiguousarray(theirs)).flatten(1).double()
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    pearson = ((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))).min().item()
    spearman = min(spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy()))
    return pearson, spearman


def run_reference(
    name: str, model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor
):
    """Their final maps, and their raw map (after their ReLU, before scaling) from their own get_cam_image."""
    target_type = ClassifierOutputSoftmaxTarget if name == "scorecam" else ClassifierOutputTarget
    targets = [target_type(int(c)) for c in classes]
    with PAIRS[name](model=model, target_layers=[layer]) as reference:
        reference.batch_size = 64
        final = reference(input_tensor=x, targets=targets)
        recorded = reference.activations_and_grads
        activations = recorded.activations[0].numpy()
        gradients = recorded.gradients[0].numpy() if recorded.gradients else None
        raw = reference.get_cam_image(x, layer, targets, activations, gradients, False)
    return final, raw


@pytest.mark.parametrize(
    ("name", "layer_name"),
    [
        ("gradcam", "layer4"),
        ("gradcam", "layer3"),
        ("gradcampp", "layer4"),
        ("layercam", "layer4"),
        ("eigencam", "layer4"),
    ],
)
def test_same_maps_as_pytorch_grad_cam(resnet18: torch.nn.Module, name: str, layer_name: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 112, 112)
    layer = getattr(resnet18, layer_name)
    with torch.no_grad():
        classes = resnet18(x).argmax(dim=1)
    cam = cams.create(name, resnet18, layer)
    ours_raw, ours = cam(x, classes, raw=True), cam(x, classes)
    final, raw = run_reference(name, resnet18, layer, x, classes)
    if name == "eigencam":
        # Their principal component keeps the SVD's arbitrary sign; ours is fixed, so align theirs first.
        sign = np.sign((raw * ours_raw.numpy()).sum(axis=(1, 2), keepdims=True))
        raw = sign * raw
    raw = np.maximum(raw, 0)
    torch.testing.assert_close(ours_raw, torch.from_numpy(raw), rtol=1e-3, atol=1e-4 * float(raw.max()))
    if name != "eigencam":  # their final Eigen-CAM map may be the other sign's
        pearson, spearman = agreement(ours, final)
        print(f"\n{name} {layer_name}: Pearson {pearson:.6f}, Spearman {spearman:.6f} at 112×112")
        assert pearson > 0.99
        assert spearman > 0.97


@pytest.mark.slow
def test_scorecam_agrees_with_pytorch_grad_cam(resnet18: torch.nn.Module) -> None:
    # layer1 (64 channels) keeps the 2 × 64 masked passes of each implementation cheap at 64 px.
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        classes = resnet18(x).argmax(dim=1)
    cam = cams.create("scorecam", resnet18, resnet18.layer1, batch_size=64)
    ours_raw, ours = cam(x, classes, raw=True), cam(x, classes)
    final, raw = run_reference("scorecam", resnet18, resnet18.layer1, x, classes)
    # They upsample the masks with align_corners=True, we with False: weights differ slightly, not the map.
    raw_pearson, _ = agreement(ours_raw, np.maximum(raw, 0))
    pearson, spearman = agreement(ours, final)
    print(
        f"\nscorecam layer1: raw Pearson {raw_pearson:.6f}; final Pearson {pearson:.6f}, Spearman {spearman:.6f}"
    )
    assert raw_pearson > 0.99
    assert pearson > 0.99
    assert spearman > 0.97
