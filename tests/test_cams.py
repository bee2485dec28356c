"""lficam.cams: hand-computed maps, every method on every backbone kind, and no side effects."""

from __future__ import annotations

import gc
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lficam
from lficam import cams
from lficam.core.errors import UnknownNameError, UserError
from tests.conftest import quiet_trainer

ALL = ["abscam", "cam", "eigencam", "fam", "gradcam", "gradcampp", "layercam", "scorecam"]

# The hand-computed network: A = the first two input channels (a 1×1 conv), logits = W · GAP(A).
A0 = [[1.0, 2.0], [3.0, 4.0]]
A1 = [[4.0, 0.0], [0.0, 1.0]]
W = [[1.0, -2.0], [-1.0, 3.0], [0.5, 0.5], [-1.0, -1.0]]


class OneConv(nn.Module):
    """y^c = Σ_k W_ck mean(A^k), so ∂y^c/∂A^k_ij = W_ck / Z with Z = 4 positions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        self.fc = nn.Linear(2, 4, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 1] = 1.0
            self.fc.weight.copy_(torch.tensor(W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def one_conv_input() -> torch.Tensor:
    return torch.stack([torch.tensor(A0), torch.tensor(A1), torch.full((2, 2), 7.0)]).unsqueeze(0)


# Logits on that input: y = [0, 1.25, 1.875, -3.75], so the predicted class is 2.
HAND_CASES = {
    # Grad-CAM, class 0: α = [1, -2]/4; 0.25·A0 − 0.5·A1 = [[-1.75, 0.5], [0.75, 0.5]] → ReLU.
    ("gradcam", 0): [[0.0, 0.5], [0.75, 0.5]],
    # Grad-CAM, class 1: α = [-1, 3]/4; [[2.75, -0.5], [-0.75, -0.25]] → ReLU.
    ("gradcam", 1): [[2.75, 0.0], [0.0, 0.0]],
    # CAM, class 0: A0 − 2·A1, no ReLU.
    ("cam", 0): [[-7.0, 2.0], [3.0, 2.0]],
    # LayerCAM, class 0: ReLU(g) = [0.25, 0] everywhere → 0.25·A0.
    ("layercam", 0): [[0.25, 0.5], [0.75, 1.0]],
    # Grad-CAM++, class 1: channel 0 has ReLU(g) = 0; channel 1: g = 0.75, ΣA = 5, a = 1/(2 + 5·0.75),
    # w = 4 · a · 0.75 = 3/5.75 → w · A1.
    ("gradcampp", 1): [[4 * 3 / 5.75, 0.0], [0.0, 3 / 5.75]],
    # Abs-CAM phase 1, class 0: α = [0.25, 0.5] → 0.25·A0 + 0.5·A1.
    ("abscam-none", 0): [[2.25, 0.5], [0.75, 1.5]],
    # Abs-CAM phase 2, class 0: mask s(L₀) = [[1, 0], [1/7, 4/7]] multiplies A (the net is linear up to A),
    # the gradients are unchanged: 0.25·A0·mask + 0.5·A1·mask.
    ("abscam-mask", 0): [[2.25, 0.0], [0.75 / 7, 4 / 7 + 2 / 7]],
}


@pytest.mark.parametrize(("method", "target"), list(HAND_CASES))
def test_hand_computed_maps_on_a_one_conv_network(method: str, target: int) -> None:
    name, _, phase2 = method.partition("-")
    options = {"phase2": phase2} if phase2 else {}
    cam = cams.create(name, OneConv(), **options)
    raw = cam(one_conv_input(), torch.tensor([target]), raw=True)
    expected = torch.tensor(HAND_CASES[method, target]).unsqueeze(0)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-6)
    # At the input size (2×2 here) the map is the raw map min-max scaled.
    low, high = expected.min(), expected.max()
    torch.testing.assert_close(cam(one_conv_input(), [target]), (expected - low) / (high - low))


def test_predicted_class_is_the_default_target_and_a_flat_map_gives_zeros() -> None:
    cam = cams.create("gradcam", OneConv())
    x = one_conv_input()
    torch.testing.assert_close(cam(x, raw=True), cam(x, torch.tensor([2]), raw=True))
    torch.testing.assert_close(cam(x, raw=True), 0.125 * torch.tensor([[[5.0, 2.0], [3.0, 5.0]]]))
    # Class 3 has only negative weights: the ReLU leaves nothing, and a flat map is all zeros, not NaN.
    assert torch.equal(cam(x, 3), torch.zeros(1, 2, 2))


def test_eigencam_is_the_first_principal_component_with_a_fixed_sign() -> None:
    # A^k = u_k · P: the centred activations are (P − mean P) uᵀ, whose projection is (P − 2.5)·‖u‖.
    net = OneConv()
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.weight[0, 0], net.conv.weight[1, 0] = 1.0, 2.0
    x = one_conv_input()
    expected = torch.tensor([[[0.0, 0.0], [0.5, 1.5]]]) * math.sqrt(5)
    torch.testing.assert_close(cams.create("eigencam", net)(x, raw=True), expected)
    # Negative activations: the component that follows the layer's activity is −(P − 2.5).
    with torch.no_grad():
        net.conv.weight.neg_()
    expected = torch.tensor([[[1.5, 0.5], [0.0, 0.0]]]) * math.sqrt(5)
    torch.testing.assert_close(cams.create("eigencam", net)(x, raw=True), expected)


def test_principal_projection_matches_an_svd_on_both_gram_sides() -> None:
    torch.manual_seed(0)
    for shape in [(3, 16, 2, 3), (3, 4, 5, 5)]:  # positions ≤ channels, and positions > channels
        a = torch.randn(shape).relu()
        ours = cams.principal_projection(a).flatten(1)
        x = a.flatten(2).transpose(1, 2)
        x = x - x.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        reference = (x @ vh[:, 0, :, None]).squeeze(-1)
        sign = torch.sign((reference * a.flatten(2).mean(dim=1)).sum(dim=1, keepdim=True))
        torch.testing.assert_close(ours, reference * sign, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("similarity", "reference", "expected"),
    [
        ("cosine", [1.0, 0.0], A0),  # ŵ = [1, 0]
        ("cosine", [0.0, 1.0], A1),
        ("euclidean", [2.5, 0.0], A0),  # c = [0, −1.5625] → min-max over channels [1, 0]
        ("euclidean", [0.0, 1.25], A1),
    ],
)
def test_fam_weights_from_two_embeddings(similarity: str, reference: list[float], expected: list) -> None:
    cam = cams.create("fam", OneConv(), similarity=similarity)
    raw = cam(one_conv_input(), raw=True, reference=torch.tensor(reference))
    torch.testing.assert_close(raw, torch.tensor([expected]))


def test_fam_with_reference_images_and_without_a_classifier() -> None:
    x = one_conv_input()
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    cam = cams.create("fam", trunk, reference=x.flip(-1))
    assert cam(x).shape == (1, 2, 2)
    # The same image as its own reference: c_k = e_k²/‖e‖², so ŵ = e²/Σe² and the map is ReLU(Σ ŵ_k A^k),
    # with A the default target layer's output (the conv, the last child that contains one).
    with torch.no_grad():
        a = trunk[0](x)
    e = a.mean(dim=(2, 3))
    expected = torch.einsum("bc,bchw->bhw", e.square() / e.square().sum(), a).relu()
    torch.testing.assert_close(cams.create("fam", trunk)(x, raw=True, reference=x), expected)
    with pytest.raises(UserError, match="reference"):
        cams.create("fam", trunk)(x)


def test_inputs_a_method_does_not_take_are_one_sentence() -> None:
    x = one_conv_input()
    with pytest.raises(UserError) as error:
        cams.create("gradcam", OneConv())(x, reference=x)
    assert str(error.value) == (
        "GradCAM has no input reference= (it takes none); a reference is FAM's: lficam.cams.create('fam', model)."
    )
    with pytest.raises(UserError, match=r"FAM has no input refrence= \(it takes reference=\)\.$"):
        cams.create("fam", OneConv())(x, refrence=x)


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, 2, 1), nn.ReLU()
        )
        self.fc = nn.Linear(5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_scorecam_equals_a_per_image_per_channel_loop() -> None:
    torch.manual_seed(1)
    net = TinyCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    targets = torch.tensor([1, 3])
    with torch.no_grad():
        a = net.features(x)
        expected = []
        for b in range(2):
            scores = []
            for k in range(a.shape[1]):
                up = F.interpolate(a[b, k][None, None], size=(8, 8), mode="bilinear", align_corners=False)[
                    0, 0
                ]
                span = up.max() - up.min()
                mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
                scores.append(net(x[b : b + 1] * mask).softmax(dim=1)[0, targets[b]])
            weights = torch.stack(scores).softmax(dim=0)
            expected.append(torch.relu((weights[:, None, None] * a[b]).sum(dim=0)))
    # batch_size 3 does not divide 2 images × 5 channels: chunks straddle the two images.
    ours = cams.create("scorecam", net, batch_size=3)(x, targets, raw=True)
    torch.testing.assert_close(ours, torch.stack(expected), rtol=1e-5, atol=1e-6)


def _models() -> dict[str, tuple[nn.Module, int]]:
    torch.manual_seed(0)
    return {
        "cifar_resnet20-none": (lficam.create_model("cifar_resnet20", num_classes=4, attention="none"), 16),
        "cifar_resnet20-lficam": (
            lficam.create_model("cifar_resnet20", num_classes=4, attention="lficam"),
            16,
        ),
        "torchvision-resnet18": (torchvision.models.resnet18(weights=None, num_classes=4), 64),
    }


MODELS = _models()


def _layer_for(method: str, model: nn.Module) -> nn.Module | None:
    """The default layer, except for Score-CAM: one masked pass per channel, so a narrow early stage."""
    if method != "scorecam":
        return None
    return model.layer1 if hasattr(model, "layer1") else model.backbone.stages[0]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", ALL)
def test_every_method_gives_unit_maps_at_the_input_size(model_name: str, method: str) -> None:
    model, side = MODELS[model_name]
    cam = cams.create(method, model, _layer_for(method, model))
    side = min(side, 32) if method == "scorecam" else side
    x = torch.randn(2, 3, side, side)
    maps = cam(x, torch.tensor([0, 3]))
    assert maps.shape == (2, side, side)
    assert maps.dtype == torch.float32
    assert maps.device == x.device
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0
    assert maps.max() <= 1
    # A map is flat (zeros: e.g. Grad-CAM of a class the image argues against) or spans [0, 1].
    assert set(maps.flatten(1).amax(dim=1).tolist()) <= {0.0, 1.0}
    raw = cam(x, raw=True)  # the predicted classes: random images should give a non-flat map
    assert lficam.core.maps.minmax(raw).amax() == 1
    with torch.no_grad():
        features = {}
        handle = cam.target_layer.register_forward_hook(lambda m, i, o: features.setdefault("a", o))
        model.eval()(x)
        handle.remove()
    assert raw.shape == (2, *features["a"].shape[-2:])


def test_cam_of_the_plain_model_is_its_own_map() -> None:
    model, side = MODELS["cifar_resnet20-none"]
    x = torch.randn(3, 3, side, side)
    with torch.no_grad():
        own = model.eval()(x).attention
    raw = cams.create("cam", model)(x, raw=True)
    torch.testing.assert_close(lficam.core.maps.minmax(raw), own, rtol=1e-5, atol=1e-5)


def _hook_count(model: nn.Module) -> int:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, kind, {})) for m in model.modules() for kind in kinds)


class Exploding(nn.Module):
    """Raises after the target layer has run, as a buggy model might."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.features(x)
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "eigencam", "abscam", "fam", "layercam"])
def test_no_hooks_or_state_change_left_after_an_exception(method: str) -> None:
    net = Exploding().train()
    net.features[1].eval()  # a mixed state must come back exactly
    options = {"reference": torch.zeros(4)} if method == "fam" else {}
    cam = cams.create(method, net, **options)
    x = torch.randn(1, 3, 4, 4)
    if method in ("eigencam", "fam"):  # they stop right after the target layer and never reach the raise
        assert cam(x).shape == (1, 4, 4)
    else:
        with pytest.raises(RuntimeError, match="boom"):
            cam(x)
    assert _hook_count(net) == 0
    assert net.training
    assert net.features[0].training
    assert not net.features[1].training
    assert torch.is_grad_enabled()


def test_bad_targets_raise_one_sentence_and_leave_no_hooks() -> None:
    model, side = MODELS["torchvision-resnet18"]
    cam = cams.create("gradcam", model)
    with pytest.raises(UserError, match=r"0…3"):
        cam(torch.randn(2, 3, side, side), torch.tensor([0, 9]))
    with pytest.raises(UserError, match="one class per image"):
        cam(torch.randn(2, 3, side, side), torch.tensor([0, 1, 2]))
    assert _hook_count(model) == 0


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "cam"])
def test_training_flag_grad_mode_and_batchnorm_statistics_are_untouched(method: str) -> None:
    torch.manual_seed(0)
    net = TinyCNN()
    net.features.insert(1, nn.BatchNorm2d(6))
    x = torch.randn(2, 3, 8, 8)
    net.train()(x)  # non-trivial running statistics
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    eval_maps = cams.create(method, net)(x, raw=True)  # called in train mode: computed in eval mode
    with torch.no_grad():
        again = cams.create(method, net)(x, raw=True)
        assert not torch.is_grad_enabled()
    assert net.training
    assert all(m.training for m in net.modules())
    for key, value in net.state_dict().items():
        assert torch.equal(value, buffers[key]), key
    torch.testing.assert_close(eval_maps, again)
    net.eval()
    torch.testing.assert_close(cams.create(method, net)(x, raw=True), eval_maps)
    assert all(p.grad is None for p in net.parameters()), "no parameter gradients are computed"


@pytest.mark.parametrize("method", ALL)
def test_works_inside_inference_mode(method: str) -> None:
    model, side = MODELS["cifar_resnet20-lficam"]
    outside = torch.randn(2, 3, side, side)
    cam = cams.create(method, model, _layer_for(method, model))
    expected = cam(outside, torch.tensor([1, 2]))
    with torch.inference_mode():
        x = outside.clone()  # an inference tensor, as a validation batch is
        maps = cam(x, torch.tensor([1, 2]))
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(maps, expected)


class _ValidatesWithGradCAM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN()
        self.cam = cams.create("gradcam", self.net)
        self.maps: list[torch.Tensor] = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.maps.append(self.cam(batch[0], batch[1]))


def test_works_in_a_lightning_validation_step() -> None:
    module = _ValidatesWithGradCAM()
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    trainer = quiet_trainer()
    trainer.validate(module, torch.utils.data.DataLoader(data, batch_size=4))
    maps = torch.cat(module.maps)
    expected = cams.create("gradcam", module.net)(data.tensors[0], data.tensors[1])
    torch.testing.assert_close(maps, expected)
    assert maps.shape == (4, 8, 8)
    assert maps.amax(dim=(1, 2)).gt(0).all()


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "scorecam", "abscam"])
@pytest.mark.slow
def test_memory_does_not_grow_over_repeated_calls(method: str) -> None:
    torch.manual_seed(0)
    net = TinyCNN().eval()
    cam = cams.create(method, net)
    x = torch.randn(2, 3, 8, 8)
    cam(x)  # warm-up: lazily created state, if any
    before = _live_tensors()
    for _ in range(10):
        maps = cam(x)
    del maps
    assert _live_tensors() == before
    assert _hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())


def test_target_layers_by_default_by_name_and_inside_a_block() -> None:
    tv, _ = MODELS["torchvision-resnet18"]
    ours, _ = MODELS["cifar_resnet20-lficam"]
    assert cams.create("gradcam", tv).target_layer is tv.layer4
    assert cams.create("gradcam", ours).target_layer is ours.backbone.stages[-1]
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None)
    assert cams.create("gradcam", mobilenet).target_layer is mobilenet.features
    inner = mobilenet.features[3].block[0]
    assert cams.create("layercam", mobilenet, inner)(torch.randn(1, 3, 64, 64)).shape == (1, 64, 64)
    assert cams.create("gradcam", tv, "layer3.1").target_layer is tv.layer3[1]
    # bn2's output is changed in place by `out += identity` afterwards: the recorded activation is a copy.
    x = torch.randn(2, 3, 64, 64)
    for layer in (tv.layer4[1].bn2, tv.layer4[1].relu, tv.layer2):
        maps = cams.create("gradcam", tv, layer)(x)
        assert maps.shape == (2, 64, 64)
        assert torch.isfinite(maps).all()
    with pytest.raises(UserError, match="no layer 'layer9'"):
        cams.create("gradcam", tv, "layer9")
    with pytest.raises(UserError, match="not part of"):
        cams.create("gradcam", tv, nn.Conv2d(3, 3, 1))
    with pytest.raises(UserError, match="B×C×h×w"):
        cams.create("gradcam", tv, tv.fc)(x)


def test_registry_names_options_and_errors() -> None:
    assert cams.available() == ALL
    assert isinstance(cams.create("Grad-CAM++", OneConv()), cams.GradCAMPlusPlus)
    with pytest.raises(UnknownNameError, match="Unknown CAM method 'smoothcam'"):
        cams.create("smoothcam", OneConv())
    with pytest.raises(UserError, match="batch_size"):
        cams.create("gradcam", OneConv(), batch_size=4)
    with pytest.raises(UnknownNameError, match="phase2"):
        cams.create("abscam", OneConv(), phase2="blend")
    with pytest.raises(UserError, match="B×C×H×W"):
        cams.create("gradcam", OneConv())(torch.randn(3, 2, 2))


class TupleOutput(nn.Module):
    """A model returning ``(logits, attention)`` as a plain tuple, as exported models do."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x.mean(dim=1)


@pytest.mark.parametrize("method", ["gradcam", "cam", "scorecam"])
def test_models_returning_a_tuple_are_explained_through_their_logits(method: str) -> None:
    torch.manual_seed(0)
    net = TinyCNN()
    x = torch.randn(2, 3, 8, 8)
    expected = cams.create(method, net, net.features)(x, raw=True)
    torch.testing.assert_close(cams.create(method, TupleOutput(net), net.features)(x, raw=True), expected)
