"""The light FIN (``fin: lite`` of ``attention=lficam``): size formula, outputs, gradients, selection by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lficam.core.errors import UnknownNameError
from lficam.models import count_parameters, create_model
from lficam.models.fin import FeatureImportanceNetwork
from lficam.models.fin_lite import LiteFeatureImportanceNetwork, lite_fin_parameters, lite_fin_width
from lficam.models.heads import create_fin


@pytest.fixture(autouse=True)
def _one_thread():
    # Small tensors: one thread is as fast, and two per process spin against the other processes
    # sharing this machine's two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("channels", "width", "count"),
    [
        # 2·C·m + 2·m² + 24·m + 2·C, worked out by hand
        (64, 16, 2 * 64 * 16 + 2 * 256 + 24 * 16 + 128),  # 3 072
        (256, 32, 16384 + 2048 + 768 + 512),  # 19 712
        (512, 64, 65536 + 8192 + 1536 + 1024),  # 76 288
        (2048, 256, 1048576 + 131072 + 6144 + 4096),  # 1 189 888
    ],
)
def test_parameter_count_equals_the_formula(channels, width, count):
    fin = create_fin("lite", channels, relu_every_layer=False)
    assert isinstance(fin, LiteFeatureImportanceNetwork)
    assert lite_fin_width(channels) == fin.width == width
    assert lite_fin_parameters(channels) == count
    assert count_parameters(fin) == count


def test_width_never_exceeds_the_channels():
    assert lite_fin_width(8) == 8
    assert count_parameters(LiteFeatureImportanceNetwork(8)) == lite_fin_parameters(8)


def test_lite_is_over_a_hundred_times_smaller_than_the_paper_fin():
    paper = count_parameters(create_fin("paper", 64, relu_every_layer=False))
    assert paper == 36 * 64**2 + 8 * 64 == 147_968
    for channels in (256, 512, 2048):
        assert (36 * channels**2 + 8 * channels) / lite_fin_parameters(channels) > 100
    # ResNet-50's trunk has 23.5 M parameters: the paper FIN is 6.4 times it, the light one 5 %
    assert lite_fin_parameters(2048) < 0.06 * 23_508_032


def test_importance_rows_are_distributions_over_channels():
    torch.manual_seed(0)
    fin = LiteFeatureImportanceNetwork(64)
    w = fin(torch.randn(3, 64, 8, 8))
    assert w.shape == (3, 64)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3))


def test_output_depends_on_the_spatial_arrangement():
    # The depthwise 3×3 convolutions see space: moving a blob within each channel changes the weights,
    # which a GAP-first network could not notice.
    torch.manual_seed(0)
    fin = LiteFeatureImportanceNetwork(64).eval()
    x = torch.zeros(1, 64, 8, 8)
    x[..., 2:4, 2:4] = torch.randn(1, 64, 1, 1)
    shifted = torch.roll(x, shifts=(2, 2), dims=(2, 3))
    moved_to_corner = torch.zeros_like(x)
    moved_to_corner[..., 0:2, 0:2] = x[..., 2:4, 2:4]
    with torch.no_grad():
        assert torch.allclose(fin(x), fin(shifted), atol=1e-6)  # interior to interior: same
        assert not torch.allclose(fin(x), fin(moved_to_corner), atol=1e-4)  # the zero padding is seen


def test_lficam_selects_the_fin_by_name_and_paper_is_the_default():
    default = create_model("cifar_resnet20", num_classes=10)
    assert type(default.fin) is FeatureImportanceNetwork
    lite = create_model("cifar_resnet20", num_classes=10, attention="lficam", fin="lite")
    assert type(lite.fin) is LiteFeatureImportanceNetwork
    assert count_parameters(default) - count_parameters(lite) == 147_968 - 3_072


def test_unknown_fin_name_lists_the_choices():
    with pytest.raises(UnknownNameError, match="choose one of lite, paper") as info:
        create_fin("tiny", 64, relu_every_layer=False)
    assert "'tiny'" in str(info.value)
    with pytest.raises(UnknownNameError, match="lite, paper"):
        create_model("cifar_resnet20", num_classes=10, fin="tiny")


def test_lficam_with_lite_fin_trains_end_to_end():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, fin="lite")
    out = model(torch.randn(4, 3, 32, 32))
    assert out.attention.shape == (4, 8, 8)
    assert out.attention.min() >= 0
    assert out.attention.max() <= 1
    model.loss(out, torch.tensor([0, 1, 2, 3])).backward()
    convs = [m for m in model.fin.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6
    for conv in convs:  # the FIN learns through the attention map alone
        assert conv.weight.grad is not None
        assert conv.weight.grad.abs().sum() > 0
