"""timm backbones (``timm/<name>``): timm's stages, the model contract, weights in timm's key names, ABN's
stride-1 copy, ONNX export, and one sentence for each bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lficam
from lficam.core.errors import UserError
from lficam.models import PlainClassifier

timm = pytest.importorskip("timm")

LISTED = [
    "resnet50",
    "resnext50_32x4d",
    "seresnet50",
    "densenet121",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "regnety_016",
    "convnext_tiny",
]
SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed(net: nn.Module) -> nn.Module:
    """Random BatchNorm/LayerNorm affine parameters and running statistics: a load that skipped any of them
    would show, and no zero-initialised gamma (timm's zero_init_last) blocks a gradient."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
        for name, p in net.named_parameters():
            if name.endswith("gamma"):  # ConvNeXt's layer scale starts at 1e-6
                p.fill_(0.5)
    return net


def save_state(net: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("name", LISTED)
@pytest.mark.slow
def test_listed_backbone_keeps_the_contract_with_weights_in_timm_key_names(name, tmp_path):
    torch.manual_seed(0)
    reference = perturbed(timm.create_model(name)).eval()  # the whole classifier, timm's key names
    path = save_state(reference, tmp_path / f"{name}.safetensors")
    model = lficam.create_model(
        f"timm/{name}", num_classes=5, attention="lficam", fin="lite", weights=str(path)
    )
    backbone = model.backbone

    # the stages are timm's feature_info stages
    info = [(d["num_chs"], d["reduction"]) for d in reference.feature_info]
    assert [(s.channels, s.reduction) for s in backbone.feature_info] == info
    assert backbone.split and len(backbone.stages) == len(info)

    # every stage's output is timm's intermediate of that stage, with the loaded weights (outputs equal)
    x = torch.randn(2, 3, SIZE, SIZE)
    model.eval()
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=len(info), intermediates_only=True)
        features = backbone.stem(x)
        for stage, want in zip(backbone.stages, expected, strict=True):
            features = stage(features)
            assert features.shape == want.shape
            torch.testing.assert_close(features, want, rtol=0, atol=0)
        out = model(x)
    side = SIZE // info[-1][1]
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()
    assert out.attention.shape == (2, side, side)
    assert float(out.attention.min()) >= 0 and float(out.attention.max()) <= 1
    assert model.target_layer is backbone.stages[-1]  # post-hoc CAMs explain the last timm stage

    # the plain head on the same trunk: logits = FC(GAP(F)), its map the CAM of the predicted class in [0, 1]
    plain = PlainClassifier(backbone, 5).eval()
    with torch.no_grad():
        plain_out = plain(x)
    torch.testing.assert_close(plain_out.logits, plain.fc(features.mean(dim=(2, 3))))
    assert plain_out.attention.shape == (2, side, side)
    assert float(plain_out.attention.min()) >= 0 and float(plain_out.attention.max()) <= 1

    # gradients reach every trainable parameter: trunk, FIN and FC
    model.train()
    model.loss(model(x), torch.tensor([0, 3])).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert dead == []


def test_paper_fin_on_a_timm_backbone_has_36_c_squared_weights_and_relu_after_every_bn():
    model = lficam.create_model("timm/efficientnet_b0", num_classes=3, attention="lficam")
    convs = [m for m in model.fin.body if isinstance(m, nn.Conv2d)]
    assert sum(c.weight.numel() for c in convs) == 36 * 320**2  # C = 320, timm's last stage
    assert sum(isinstance(m, nn.ReLU) for m in model.fin.body) == 4  # ImageNet family: the later code
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, SIZE, SIZE)).attention.shape == (1, 2, 2)


def test_features_only_key_names_and_a_pretrained_tag_load_too(tmp_path):
    # DenseNet's features_only model flattens Sequentials: features.denseblock1 → features_denseblock1
    torch.manual_seed(0)
    features = perturbed(timm.create_model("densenet121", features_only=True)).eval()
    assert any(k.startswith("features_denseblock1.") for k in features.state_dict())
    path = save_state(features, tmp_path / "features.safetensors")
    model = lficam.create_model(
        "timm/densenet121.ra_in1k", num_classes=3, attention="none", weights=str(path)
    )
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().backbone(x), features(x)[-1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["seresnet50", "densenet121", "mobilenetv3_large_100"])
def test_abn_branches_on_a_stride_one_copy_of_the_last_timm_stage(name):
    torch.manual_seed(0)
    model = lficam.create_model(f"timm/{name}", num_classes=4, attention="abn")
    copy, real = model.attention_stage, model.backbone.stages[-1]
    assert not {p.data_ptr() for p in copy.parameters()} & {p.data_ptr() for p in real.parameters()}
    assert {m.stride for m in copy.modules() if isinstance(m, nn.Conv2d)} == {(1, 1)}
    assert not [m for m in copy.modules() if isinstance(m, nn.AvgPool2d | nn.MaxPool2d) and m.stride != 1]
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, SIZE, SIZE))
    side = SIZE // model.backbone.feature_info[-2].reduction  # the extractor's resolution: 4×4 at 64 px
    assert out.attention.shape == (2, side, side) and out.aux_logits.shape == (2, 4)
    assert float(out.attention.min()) >= 0 and float(out.attention.max()) <= 1


def test_abn_on_a_backbone_whose_last_stage_cannot_be_copied_is_one_sentence():
    with pytest.raises(
        UserError, match=r"stride-1 copy of the last stage of timm/convnext_tiny.*gives \(768, 7, 7\)"
    ):
        lficam.create_model("timm/convnext_tiny", num_classes=4, attention="abn")
    # a timm form kept whole (hook-based Xception) has one stage: nothing to branch before
    with pytest.raises(UserError, match=r"at least two stages.*timm/legacy_xception is one block.*lficam"):
        lficam.create_model("timm/legacy_xception", num_classes=4, attention="abn")


def test_a_timm_form_kept_whole_still_gives_lficam_its_last_feature_map():
    model = lficam.create_model("timm/legacy_xception", num_classes=3, attention="lficam", fin="lite").eval()
    assert not model.backbone.split and model.backbone.feature_info[-1].channels == 2048
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96))
    assert out.attention.shape == (1, 3, 3)


@pytest.mark.slow  # one export: 15–60 s on a shared 2-core CPU
def test_onnx_export_of_a_timm_backbone_agrees_with_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from lficam.export import export

    config = {
        "backbone": "timm/mobilenetv3_large_100",
        "num_classes": 3,
        "attention": "lficam",
        "fin": "lite",
    }
    torch.manual_seed(0)
    net = lficam.create_model(**config)
    perturbed(net)
    # pretrained=True in the stored config: rebuilding the model must neither download nor read any weights
    checkpoint = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"model_config": {**config, "pretrained": True}},
    }
    torch.save(checkpoint, tmp_path / "model.ckpt")
    report = export(tmp_path / "model.ckpt", "onnx", tmp_path / "model.onnx", image_size=SIZE)
    print(report)
    assert report.check_batch_size == 3
    assert report.max_abs_diff_attention < 1e-4 and report.max_abs_diff_logits < 1e-4


# Bad input: one sentence each


def test_unknown_timm_name_lists_close_matches():
    with pytest.raises(UserError, match=r"Unknown timm model 'resnet5O'.*did you mean timm/resnet50"):
        lficam.create_model("timm/resnet5O", num_classes=3)
    with pytest.raises(UserError, match=r"no pretrained tag 'nope'.*timm/resnet50\.a1_in1k"):
        lficam.create_model("timm/resnet50.nope", num_classes=3)


def test_a_timm_model_without_a_features_only_form_is_one_sentence():
    from timm.models import build_model_with_cfg, register_model

    class NoFeatureInfo(nn.Module):  # a model registered outside timm, without feature_info
        def __init__(self, **kwargs: object) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

    if not timm.is_model("lficam_test_no_features"):

        @register_model
        def lficam_test_no_features(pretrained: bool = False, **kwargs: object) -> nn.Module:
            return build_model_with_cfg(NoFeatureInfo, "lficam_test_no_features", pretrained, **kwargs)

    with pytest.raises(UserError, match=r"lficam_test_no_features has no features_only form.*timm/resnet50"):
        lficam.create_model("timm/lficam_test_no_features", num_classes=3)


def test_a_weights_file_of_another_architecture_says_what_is_missing_and_unexpected(tmp_path):
    resnet18 = timm.create_model("resnet18")
    path = save_state(resnet18, tmp_path / "resnet18.safetensors")
    # counted independently: the features of ResNet-50 against ResNet-18's keys (its fc is the ignored head)
    wanted = timm.create_model("resnet50", features_only=True).state_dict()
    given = {k: v for k, v in resnet18.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in wanted if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in wanted]
    reshaped = [k for k in wanted if k in given and given[k].shape != wanted[k].shape]
    assert missing and reshaped
    with pytest.raises(UserError) as caught:
        lficam.create_model("timm/resnet50", num_classes=3, weights=str(path))
    message = str(caught.value)
    assert (
        f"do not fit timm/resnet50: {len(missing)} of its keys are missing, {len(unexpected)} are unexpected "
        in message
    )
    assert f"and {len(reshaped)} have another shape" in message and "missing e.g. 'layer" in message
    assert "\n" not in message


def test_timm_kwargs_reach_timm_and_a_bad_one_is_one_sentence():
    model = lficam.create_model(
        "timm/resnet50", num_classes=3, attention="none", timm_kwargs={"output_stride": 16}
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, SIZE, SIZE)).attention.shape == (1, 4, 4)  # dilated last stage
    with pytest.raises(UserError, match=r"timm_kwargs=\{'colour': 3\}"):
        lficam.create_model("timm/resnet18", num_classes=3, timm_kwargs={"colour": 3})


@pytest.mark.slow
def test_model_timm_config_composes_and_trains_one_step(tmp_path):
    from lficam.training.task import build_module
    from tests.conftest import TINY, compose_train

    cfg = compose_train([*TINY, "model=timm", "model.backbone=timm/efficientnet_b0"], tmp_path)
    module = build_module(cfg)
    assert module.hparams.model_config == {
        "backbone": "timm/efficientnet_b0",
        "num_classes": 10,
        "attention": "lficam",
        "pretrained": False,
        "weights": None,
        "timm_kwargs": {},
        "fin": "paper",
        "fin_relu_every_layer": None,
    }
    optimizer = module.configure_optimizers()["optimizer"]
    before = [p.detach().clone() for p in module.net.parameters()]
    loss = module.net.loss(module.net(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [not torch.equal(b, p) for b, p in zip(before, module.net.parameters(), strict=True)]
    assert all(changed)  # every parameter took the step: backbone, FIN and FC
