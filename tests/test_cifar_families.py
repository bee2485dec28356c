"""The official code's CIFAR ResNeXt-29 and DenseNet-BC-100 (method.md §1.3b): sizes, which feature map the FIN
sees, the post-reweighting BN-ReLU of DenseNet, ABN on both, and their configs training one step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lficam
from lficam.core.errors import UserError
from lficam.models import count_parameters
from lficam.models.normalize import minmax_channels, minmax_spatial
from lficam.training.task import build_module
from tests.conftest import TINY, compose_train


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnext29():
    torch.manual_seed(0)
    return lficam.create_model("cifar_resnext29", num_classes=10, attention="lficam")


@pytest.fixture(scope="module")
def densenet100():
    torch.manual_seed(0)
    return lficam.create_model("cifar_densenet100", num_classes=10, attention="lficam")


def test_resnext29_is_8x64d_with_34_4_m_parameters_and_c_1024(resnext29):
    backbone = resnext29.backbone
    assert [(s.channels, s.reduction) for s in backbone.feature_info] == [(256, 1), (512, 2), (1024, 4)]
    assert count_parameters(backbone) + count_parameters(resnext29.fc) == pytest.approx(34.4e6, abs=0.05e6)
    fin_convs = sum(p.numel() for p in resnext29.fin.parameters() if p.ndim == 4)
    assert fin_convs == 36 * 1024**2  # 37.7 M, method.md §1.3b
    assert sum(isinstance(m, nn.ReLU) for m in resnext29.fin.body) == 2  # CIFAR code: after the 2nd and 4th
    first = backbone.stages[0][0]
    assert first.conv_group.groups == 8 and first.conv_group.in_channels == 512  # 8 groups × 64 channels
    assert len(backbone.stages[0]) == 3  # (29 − 2) / 9 blocks per stage


def test_resnext29_map_is_the_last_stage_at_side_over_4(resnext29):
    x = torch.randn(2, 3, 16, 16)  # 16 px: the same code path as 32 px at a quarter of the cost
    with torch.no_grad():
        out = resnext29.eval()(x)
        features = resnext29.backbone(x)
    assert features.shape == (2, 1024, 4, 4) and out.attention.shape == (2, 4, 4)
    assert isinstance(resnext29.backbone.post, nn.Identity)
    torch.testing.assert_close(
        out.logits, resnext29.fc(((1 + out.attention.unsqueeze(1)) * features).mean(dim=(2, 3)))
    )


def test_densenet100_has_0_8_m_parameters_and_c_342(densenet100):
    backbone = densenet100.backbone
    assert [(s.channels, s.reduction) for s in backbone.feature_info] == [(108, 2), (150, 4), (342, 4)]
    total = count_parameters(backbone) + count_parameters(densenet100.fc)
    assert 0.76e6 < total < 0.78e6  # "0.8 M": 769 162 with the 10-class FC
    layers = [m for m in backbone.modules() if type(m).__name__ == "DenseLayer"]
    assert len(layers) == 48  # 3 blocks of (100 − 4) / 6 = 16 bottleneck layers
    assert sum(p.numel() for p in densenet100.fin.parameters() if p.ndim == 4) == 36 * 342**2


def test_densenet_fin_sees_the_block_output_before_bn_relu_which_follows_the_reweighting(densenet100):
    model = densenet100.eval()
    with torch.no_grad():  # BN statistics that are not the identity, so a missing BN would show
        for m in model.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    seen = {}
    model.fin.register_forward_hook(lambda m, i, o: seen.update(masked=i[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        features = model.backbone(x)  # the third dense block's output
    assert features.shape == (2, 342, 8, 8) and float(features.min()) < 0  # pre-activation: negative values
    # the FIN's input is N(F) · grey image, from F before the final BN-ReLU
    grey = F.interpolate(x.mean(1, keepdim=True), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen["masked"], minmax_channels(features) * grey)
    # A from raw F; then FC(GAP(ReLU(BN((1 + A)·F)))) with the trunk's final BN
    with torch.no_grad():
        weights = model.fin(seen["masked"])
        saliency = torch.relu(torch.einsum("bc,bchw->bhw", weights, features))
        attention = minmax_spatial(saliency.unsqueeze(1))
        bn = model.backbone.post[0]
        activated = torch.relu(
            F.batch_norm((1 + attention) * features, bn.running_mean, bn.running_var, bn.weight, bn.bias)
        )
    torch.testing.assert_close(out.attention, attention.squeeze(1))
    torch.testing.assert_close(out.logits, model.fc(activated.mean(dim=(2, 3))))
    assert model.target_layer is model.backbone.post  # CAMs explain what GAP → FC sees


def test_plain_densenet_cam_is_on_the_activated_features():
    torch.manual_seed(1)
    model = lficam.create_model("cifar_densenet100", num_classes=4, attention="none").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        activated = model.backbone.post(model.backbone(x))
    assert float(activated.min()) >= 0
    torch.testing.assert_close(out.logits, model.fc(activated.mean(dim=(2, 3))))
    cam = torch.einsum("c,chw->hw", model.fc.weight[out.logits[0].argmax()], activated[0])
    torch.testing.assert_close(out.attention[0], (cam - cam.min()) / (cam.max() - cam.min()))


@pytest.mark.parametrize(
    ("backbone", "size", "side"), [("cifar_resnext29", 16, 8), ("cifar_densenet100", 32, 8)]
)
def test_abn_on_the_cifar_families_copies_the_last_stage_at_stride_one(backbone, size, side):
    torch.manual_seed(0)
    model = lficam.create_model(backbone, num_classes=5, attention="abn").eval()
    assert {m.stride for m in model.attention_stage.modules() if isinstance(m, nn.Conv2d)} == {(1, 1)}
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    # ResNeXt branches on the 16×16 (at 32 px) second stage, DenseNet after its second transition (8×8)
    assert out.attention.shape == (2, side, side) and out.aux_logits.shape == (2, 5)


def test_weights_imagenet_on_a_cifar_backbone_is_one_sentence(tmp_path):
    with pytest.raises(
        UserError, match=r"cifar_densenet100 has no published pretrained weights.*weights='imagenet'"
    ):
        lficam.create_model("cifar_densenet100", num_classes=10, weights="imagenet")
    # its own state dict as a local file loads
    torch.manual_seed(3)
    source = lficam.create_model("cifar_resnet20", num_classes=10)
    torch.save(source.backbone.state_dict(), tmp_path / "r20.pth")
    loaded = lficam.create_model("cifar_resnet20", num_classes=10, weights=str(tmp_path / "r20.pth"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().backbone(x), source.eval().backbone(x), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "size"), [("cifar_resnext29", 8), ("cifar_densenet100", 32)])
@pytest.mark.slow
def test_config_composes_and_trains_one_step(name, size, tmp_path):
    cfg = compose_train([*TINY, f"model={name}"], tmp_path)
    module = build_module(cfg)
    assert module.hparams.model_config["backbone"] == name
    optimizer = module.configure_optimizers()["optimizer"]
    images, labels = torch.randn(2, 3, size, size), torch.tensor([0, 1])
    before = [p.detach().clone() for p in module.net.fin.parameters()]
    loss = module.net.loss(module.net(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, module.net.fin.parameters(), strict=True))
