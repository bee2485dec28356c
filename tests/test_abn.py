"""ABN (method.md §2): shapes, the (1 + M)·g reweighting, both losses, gradients, registration, overfitting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lficam.core.errors import UserError
from lficam.models import ABNClassifier, available_attentions, create_model
from lficam.models.output import ModelOutput

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(autouse=True)
def _one_thread():
    # These tensors are small: one thread is as fast, and on a shared 2-core machine two threads
    # per process spin against the other processes (30 Adam steps went from 2 s to 150 s of wall time).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _abn(backbone: str = "cifar_resnet20", num_classes: int = 10, **options: object) -> ABNClassifier:
    torch.manual_seed(0)
    model = create_model(backbone, num_classes=num_classes, attention="abn", **options)
    assert isinstance(model, ABNClassifier)
    return model


@pytest.mark.parametrize(
    ("backbone", "options", "size", "side"),
    [
        ("cifar_resnet20", {}, 32, 16),  # layer2 of a CIFAR ResNet: 16×16 at 32 px
        ("cifar_resnet44", {"block": "bottleneck"}, 16, 8),  # 256 channels
        ("cifar_resnet20", {}, 48, 24),
        ("resnet18", {}, 224, 14),  # layer3 of a torchvision ResNet: 14×14 at 224 px
        ("resnet50", {}, 64, 4),
    ],
)
def test_shapes_and_ranges_on_every_backbone_kind(backbone, options, size, side):
    model = _abn(backbone, num_classes=7, **options)
    out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 7)
    assert out.aux_logits.shape == (2, 7)
    assert out.attention.shape == (2, side, side)
    assert torch.isfinite(out.logits).all()
    assert torch.isfinite(out.aux_logits).all()
    assert out.attention.min() >= 0
    assert out.attention.max() <= 1
    # the map comes from the branch's resolution: the second-to-last stage's reduction
    assert side == size // model.backbone.feature_info[-2].reduction


def test_attention_stage_is_an_independent_stride_one_copy():
    model = _abn("resnet18")
    copy, real = model.attention_stage, model.backbone.stages[-1]
    assert copy is not real
    strides = {m.stride for m in copy.modules() if isinstance(m, nn.Conv2d)}
    assert strides == {(1, 1)}
    assert (2, 2) in {m.stride for m in real.modules() if isinstance(m, nn.Conv2d)}
    real_ptrs = {p.data_ptr() for p in real.parameters()}
    assert not real_ptrs & {p.data_ptr() for p in copy.parameters()}
    # same architecture: the same parameter shapes, block by block
    assert [p.shape for p in copy.parameters()] == [p.shape for p in real.parameters()]


def test_target_layer_is_the_perception_branch_last_stage():
    model = _abn()
    assert model.target_layer is model.backbone.stages[-1]


def test_last_stage_input_is_one_plus_map_times_extracted_features():
    model = _abn().eval()
    x = torch.randn(3, 3, 32, 32)
    seen: list[torch.Tensor] = []
    handle = model.backbone.stages[-1].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        out = model(x)
        g = model.backbone.forward_until(x, 2)
    handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], (1 + out.attention.unsqueeze(1)) * g)


def _set_constant_map(model: ABNClassifier, logit: float) -> None:
    """Make M = sigmoid(logit) everywhere: the map's BN outputs its bias when its weight is 0."""
    bn = model.attention_map[1]
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.fill_(logit)


def test_a_zero_map_gives_the_plain_backbone_and_a_half_map_scales_g_by_one_and_a_half():
    model = _abn().eval()
    x = torch.randn(2, 3, 32, 32)
    stages = model.backbone.stages
    with torch.no_grad():
        g = model.backbone.forward_until(x, 2)
        _set_constant_map(model, -200.0)  # sigmoid(-200) = 0 in float32
        out = model(x)
        assert out.attention.abs().max() == 0
        torch.testing.assert_close(out.logits, model.fc(model.backbone(x).mean(dim=(2, 3))))
        _set_constant_map(model, 0.0)  # sigmoid(0) = 1/2
        out = model(x)
        assert torch.equal(out.attention, torch.full((2, 16, 16), 0.5))
        torch.testing.assert_close(out.logits, model.fc(stages[-1](1.5 * g).mean(dim=(2, 3))))


def test_loss_is_perception_plus_attention_cross_entropy():
    model = _abn(num_classes=5)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 4, 1])
    out = model(x)
    loss = model.loss(out, y)
    expected = F.cross_entropy(out.logits, y) + F.cross_entropy(out.aux_logits, y)
    torch.testing.assert_close(loss, expected)
    # the same by hand: mean negative log-softmax of the true class, once per branch
    by_hand = sum(-(z.log_softmax(1)[torch.arange(4), y]).mean() for z in (out.logits, out.aux_logits))
    torch.testing.assert_close(loss, by_hand)
    # and it is not the perception loss alone (the branches disagree at initialisation)
    assert (loss - F.cross_entropy(out.logits, y)).abs() > 0.1


def _grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_gradient_reaches_both_branches_and_the_backbone():
    model = _abn()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model.loss(model(x), y).backward()
    parts = {
        "stem": model.backbone.stem,
        "extractor stages": model.backbone.stages[:-1],
        "perception stage": model.backbone.stages[-1],
        "fc": model.fc,
        "attention stage": model.attention_stage,
        "attention scores": model.attention_scores,
        "attention map": model.attention_map,
    }
    for name, part in parts.items():
        assert _grad_norm(part) > 0, name


def test_perception_loss_alone_trains_the_map_and_attention_loss_alone_leaves_perception():
    model = _abn()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = model(x)
    F.cross_entropy(out.logits, y).backward(retain_graph=True)
    assert _grad_norm(model.attention_map) > 0  # M is not detached
    assert _grad_norm(model.attention_scores) == 0
    model.zero_grad(set_to_none=True)
    F.cross_entropy(out.aux_logits, y).backward()
    assert _grad_norm(model.attention_scores) > 0
    assert _grad_norm(model.fc) == 0
    assert _grad_norm(model.backbone.stages[-1]) == 0
    assert _grad_norm(model.backbone.stem) > 0


def test_registered_with_create_model_and_rejects_head_options():
    assert "abn" in available_attentions()
    model = create_model("cifar_resnet20", num_classes=10, attention="abn")
    assert isinstance(model, ABNClassifier)
    assert model.fc.out_features == 10
    with pytest.raises(UserError, match="fin"):
        create_model("cifar_resnet20", num_classes=10, attention="abn", fin="lite")


def test_attention_abn_config_composes_to_an_abn_model():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lficam.training.model_config import model_config_of

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["attention=abn", "model=cifar_resnet20"])
    assert OmegaConf.to_container(cfg.attention) == {"name": "abn", "options": {}}
    model = create_model(**model_config_of(cfg))
    assert isinstance(model, ABNClassifier)


@pytest.mark.slow
def test_overfits_two_batches():
    # Each class is a fixed random pattern under noise: 32 images that the perception branch fits within
    # 30 Adam steps; the attention branch (K channels, GAP) is slower but must still learn.
    torch.manual_seed(0)
    model = _abn(num_classes=4)
    patterns = torch.randn(4, 3, 16, 16)
    labels = [torch.randint(0, 4, (16,)) for _ in range(2)]
    batches = [(patterns[y] + 0.5 * torch.randn(16, 3, 16, 16), y) for y in labels]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []  # (total, perception CE, attention CE) per step
    for step in range(30):
        x, y = batches[step % 2]
        out = model(x)
        loss = model.loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(
            (loss.item(), F.cross_entropy(out.logits, y).item(), F.cross_entropy(out.aux_logits, y).item())
        )
    first = torch.tensor(history[:2]).mean(0)
    last = torch.tensor(history[-2:]).mean(0)
    assert first[0] > 2.0, history  # two cross-entropies of about log 4 each at initialisation
    assert last[0] < 0.35 * first[0], history
    assert last[1] < 0.05, history
    assert last[2] < 0.7 * first[2], history
