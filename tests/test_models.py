"""The model contract and LFI-CAM's forward pass, pinned against a straightforward re-derivation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lficam
from lficam.core.errors import UnknownNameError, UserError
from lficam.models import LFICAMClassifier, PlainClassifier, count_parameters, create_backbone
from lficam.models.backbones import Backbone, StageInfo
from lficam.models.cifar_resnet import cifar_resnet
from lficam.models.fin import FeatureImportanceNetwork


def tiny_backbone(channels: int = 4) -> Backbone:
    stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
    stage = nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU())
    return Backbone(stem, [stage], [StageInfo(channels, 2)], family="cifar")


def reference_lficam(model: LFICAMClassifier, x: torch.Tensor):
    """method.md §1.2 written out loop by loop, independent of the package's helpers."""
    feats = model.backbone(x)
    b, c, h, w = feats.shape
    grey = F.interpolate(x.mean(1, keepdim=True), size=(h, w), mode="bilinear", align_corners=False)
    masked = torch.empty_like(feats)
    for i in range(b):
        for k in range(c):
            f = feats[i, k]
            lo, hi = f.min(), f.max()
            n = torch.ones_like(f) if hi == lo else (f - lo) / (hi - lo)
            n = torch.where(f == 0, torch.zeros_like(n), n)
            masked[i, k] = n * grey[i, 0]
    weights = torch.softmax(model.fin.body(masked).mean(dim=(2, 3)), dim=1)
    attention = torch.empty(b, h, w)
    for i in range(b):
        s = torch.relu(sum(weights[i, k] * feats[i, k] for k in range(c)))
        attention[i] = s if s.max() == s.min() else (s - s.min()) / (s.max() - s.min())
    pooled = ((1 + attention.unsqueeze(1)) * feats).mean(dim=(2, 3))
    return model.fc(pooled), attention


def test_lficam_matches_reference_derivation():
    torch.manual_seed(0)
    model = LFICAMClassifier(tiny_backbone(), num_classes=3).eval()
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    logits, attention = reference_lficam(model, x)
    torch.testing.assert_close(out.attention, attention, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.logits, logits, atol=1e-6, rtol=1e-5)
    assert out.aux_logits is None
    assert out.attention.min() >= 0 and out.attention.max() <= 1


def test_fin_structure_and_size():
    fin = FeatureImportanceNetwork(64, relu_every_layer=False)
    convs = [m for m in fin.body if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert sum(c.weight.numel() for c in convs) == 4 * 9 * 64 * 64  # 147,456 ≈ 0.15 M
    assert sum(isinstance(m, nn.ReLU) for m in fin.body) == 2  # after the 2nd and 4th (CIFAR code)
    every = FeatureImportanceNetwork(8, relu_every_layer=True)
    assert sum(isinstance(m, nn.ReLU) for m in every.body) == 4
    weights = fin(torch.randn(3, 64, 4, 4))
    torch.testing.assert_close(weights.sum(1), torch.ones(3))


def test_all_zero_features_give_zero_attention_and_bias_logits():
    backbone = tiny_backbone()
    for p in backbone.parameters():
        nn.init.zeros_(p)
    model = LFICAMClassifier(backbone, num_classes=3).eval()
    out = model(torch.randn(2, 3, 8, 8))
    assert torch.equal(out.attention, torch.zeros(2, 4, 4))
    torch.testing.assert_close(out.logits, model.fc.bias.expand(2, 3))


class ConstantFeatures(nn.Module):
    """A trunk whose 3×3 feature maps are constant over space: one value ≥ 3 per image and channel."""

    out_channels = 4
    family = "cifar"

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([3.0, 5.0, 7.0, 9.0]))
        self.post = nn.Identity()  # what a Backbone applies before GAP (DenseNet's BN-ReLU; here nothing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.mean(dim=(1, 2, 3)).abs() + 1
        return (level.view(-1, 1, 1, 1) * self.scale.view(1, -1, 1, 1)).expand(-1, -1, 3, 3).contiguous()


def test_a_constant_saliency_keeps_the_official_logits_and_reports_zeros():
    torch.manual_seed(4)
    model = LFICAMClassifier(ConstantFeatures(), num_classes=3).eval()
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    logits, official = reference_lficam(model, x)
    assert official.min() > 1  # the official A of a constant S is S itself, outside [0, 1]
    torch.testing.assert_close(out.logits, logits, atol=1e-6, rtol=1e-5)  # F' = (1 + S)·F as the authors'
    assert torch.equal(out.attention, torch.zeros(2, 3, 3))  # reported: flat, so zeros


def test_a_one_pixel_map_keeps_the_official_logits_and_reports_zeros():
    backbone = tiny_backbone()
    for conv in (backbone.stem[0], backbone.stages[0][0]):
        nn.init.constant_(conv.weight, 0.1)
        nn.init.constant_(conv.bias, 1.0)
    model = LFICAMClassifier(backbone, num_classes=3).eval()
    x = torch.rand(2, 3, 2, 2)  # 2 px → 1×1 features, as ResNet-50 at 32 px
    out = model(x)
    logits, official = reference_lficam(model, x)
    assert official.shape == (2, 1, 1) and official.min() > 1
    torch.testing.assert_close(out.logits, logits, atol=1e-6, rtol=1e-5)
    assert torch.equal(out.attention, torch.zeros(2, 1, 1))


@pytest.mark.parametrize("attention", ["lficam", "abn", "none"])
def test_every_head_reports_maps_in_the_unit_interval_at_one_pixel(attention):
    torch.manual_seed(5)
    model = lficam.create_model("cifar_resnet20", num_classes=4, attention=attention).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 4, 4) * 3)  # 4 px: LFI-CAM's and the CAM's maps are 1×1
    assert out.attention.min() >= 0 and out.attention.max() <= 1
    if attention != "abn":  # ABN's M is a sigmoid (2×2 here), reported as it is
        assert torch.equal(out.attention, torch.zeros(3, 1, 1))


def test_residual_reweighting_reaches_classifier():
    torch.manual_seed(1)
    model = LFICAMClassifier(tiny_backbone(), num_classes=3).eval()
    seen = {}
    model.fc.register_forward_hook(lambda m, i, o: seen.update(pooled=i[0]))
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    feats = model.backbone(x)
    torch.testing.assert_close(seen["pooled"], ((1 + out.attention.unsqueeze(1)) * feats).mean(dim=(2, 3)))


def test_gradients_reach_fin_and_trunk():
    torch.manual_seed(2)
    model = LFICAMClassifier(tiny_backbone(), num_classes=3)
    out = model(torch.randn(4, 3, 8, 8))
    model.loss(out, torch.tensor([0, 1, 2, 0])).backward()
    fin_grad = sum(p.grad.abs().sum() for p in model.fin.parameters())
    trunk_grad = model.backbone.stem[0].weight.grad.abs().sum()
    assert fin_grad > 0 and trunk_grad > 0
    # The FIN influences the loss only through A: its gradient flows through the attention map.
    model.zero_grad()
    out = model(torch.randn(4, 3, 8, 8))
    out.attention.sum().backward()
    assert sum(p.grad.abs().sum() for p in model.fin.parameters()) > 0


def test_plain_model_map_is_cam_of_predicted_class():
    torch.manual_seed(3)
    model = PlainClassifier(tiny_backbone(), num_classes=3).eval()
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    feats = model.backbone(x)
    torch.testing.assert_close(out.logits, model.fc(feats.mean(dim=(2, 3))))
    for i in range(2):
        cam = (model.fc.weight[out.logits[i].argmax()].view(-1, 1, 1) * feats[i]).sum(0)
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        torch.testing.assert_close(out.attention[i], cam)


@pytest.mark.parametrize(
    ("backbone", "size", "side", "channels"),
    [
        ("cifar_resnet20", 32, 8, 64),
        ("cifar_resnet32", 32, 8, 64),
        ("cifar_resnet44", 32, 8, 256),
        ("cifar_resnet56", 32, 8, 256),
        ("cifar_resnet110", 32, 8, 256),
        ("resnet18", 64, 2, 512),
        ("resnet34", 64, 2, 512),
        ("resnet50", 64, 2, 2048),
        ("resnet101", 64, 2, 2048),
        ("resnet152", 64, 2, 2048),
    ],
)
@pytest.mark.parametrize("attention", ["lficam", "none"])
@pytest.mark.slow
def test_every_backbone_keeps_the_contract(backbone, size, side, channels, attention):
    torch.manual_seed(0)
    model = lficam.create_model(backbone, num_classes=7, attention=attention).eval()
    assert model.backbone.out_channels == channels
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.logits.shape == (2, 7)
    assert out.attention.shape == (2, side, side)
    assert out.attention.min() >= 0 and out.attention.max() <= 1
    assert torch.isfinite(out.logits).all()


def test_parameter_counts_match_the_paper():
    resnet110 = create_backbone("cifar_resnet110")
    assert 1.65e6 < count_parameters(resnet110) < 1.75e6  # "1.7 M"
    model = lficam.create_model("cifar_resnet110", num_classes=10)
    fin_convs = sum(p.numel() for n, p in model.fin.named_parameters() if p.ndim == 4)
    assert fin_convs == 4 * 9 * 256**2  # 2.36 M
    assert count_parameters(create_backbone("cifar_resnet20")) == 272_474 - 650  # without the 64→10 FC


def test_stem_stride_one_doubles_the_map():
    model = lficam.create_model("resnet18", num_classes=3, stem_stride=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).attention.shape == (1, 4, 4)
    assert model.backbone.feature_info[-1].reduction == 16


def test_local_weights_file_loads_into_trunk(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = lficam.create_model("resnet18", num_classes=5, weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.backbone.stages[3][1].conv2.weight, reference.layer4[1].conv2.weight)
    torch.testing.assert_close(model.backbone.stem[0].weight, reference.conv1.weight)


def test_weights_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"conv1.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="plain state dict"):
        lficam.create_model("resnet18", num_classes=5, weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_bad_names_and_options_say_what_to_do():
    with pytest.raises(UnknownNameError, match=r"Unknown backbone 'resnet9'.*cifar_resnet20.*resnet50"):
        lficam.create_model("resnet9", num_classes=10)
    with pytest.raises(UnknownNameError, match=r"Unknown attention 'gradcam'.*lficam.*none"):
        lficam.create_model("resnet18", num_classes=10, attention="gradcam")
    with pytest.raises(UserError, match=r"Unknown option\(s\) \['depth'\].*valid options are"):
        lficam.create_model("resnet18", num_classes=10, depth=3)
    with pytest.raises(UnknownNameError, match="FIN variant"):
        lficam.create_model("cifar_resnet20", num_classes=10, fin="huge")
    with pytest.raises(UserError, match="6n \\+ 2"):
        cifar_resnet(21)


def test_wrong_input_shape_is_one_sentence():
    model = lficam.create_model("cifar_resnet20", num_classes=10)
    with pytest.raises(ValueError, match=r"B×3×H×W, got shape \(3, 32, 32\).*unsqueeze"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
