"""Pretrained weights offline: torch's and Hugging Face's caches are read, a missing file without network is one
sentence naming the cache path, local files in torchvision's key names load, and the pretrained normalisation
reaches the data config."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import lficam
from lficam.core.errors import UserError
from lficam.training.finetune import resolve_normalization
from tests.conftest import TINY, compose_train

timm = pytest.importorskip("timm")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty torch and Hugging Face caches under tmp_path, and every download failing as without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    calls = []

    def refuse(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return calls


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().backbone(x)


def torchvision_trunk(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        net.eval()
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def test_torchvision_weights_without_network_and_cache_name_the_file_and_its_cache_path(no_network, tmp_path):
    with pytest.raises(UserError) as caught:
        lficam.create_model("resnet50", num_classes=3, weights="imagenet")
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"  # DEFAULT = IMAGENET1K_V2
    message = str(caught.value)
    assert f"put it at {path}" in message
    assert "download https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "Temporary failure in name resolution" in message and "\n" not in message
    assert no_network == ["https://download.pytorch.org/models/resnet50-11ad3fa6.pth"]
    assert not path.exists()  # no partial file left in the cache


def test_torchvision_weights_are_read_from_torch_cache_offline(no_network, tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    x = torch.randn(1, 3, 64, 64)
    for name in ("imagenet", "ResNet18_Weights.IMAGENET1K_V1"):
        model = lficam.create_model("resnet18", num_classes=3, attention="none", weights=name)
        torch.testing.assert_close(features(model, x), torchvision_trunk(reference, x), rtol=0, atol=0)
    assert no_network == []  # found in the cache: nothing was downloaded


def test_torchvision_weights_are_downloaded_into_the_cache_with_the_hash_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = torchvision.models.resnet18(weights=None)
    seen = {}

    def download(url, dst, hash_prefix=None, progress=True):
        seen.update(url=url, dst=dst, hash_prefix=hash_prefix)
        torch.save(reference.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    model = lficam.create_model("resnet18", num_classes=3, attention="none", weights="IMAGENET1K_V1")
    assert seen["hash_prefix"] == "f37072fd"
    assert Path(seen["dst"]) == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(features(model, x), torchvision_trunk(reference, x), rtol=0, atol=0)


def test_an_unknown_torchvision_weight_name_lists_the_known_ones():
    with pytest.raises(
        UserError,
        match=r"weights='IMAGENET1K_V9'.*resnet50: choose one of imagenet, IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT",
    ):
        lficam.create_model("resnet50", num_classes=3, weights="IMAGENET1K_V9")


def test_timm_weights_without_network_and_cache_name_the_repository_and_the_cache_folder(
    no_network, tmp_path
):
    with pytest.raises(UserError) as caught:
        lficam.create_model("timm/resnet18", num_classes=3, pretrained=True)
    message = str(caught.value)
    folder = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    assert (
        f"timm/resnet18.a1_in1k, file model.safetensors) are not in the Hugging Face cache {folder}"
        in message
    )
    assert "hf download timm/resnet18.a1_in1k model.safetensors" in message
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message
    assert "\n" not in message
    with pytest.raises(UserError, match=r"not in the Hugging Face cache"):  # weights=imagenet means the same
        lficam.create_model("timm/resnet18", num_classes=3, weights="imagenet")


def test_timm_weights_are_read_from_the_hugging_face_cache_offline(no_network, tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("resnet18").eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the weights a fresh model would have
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()},
        str(repo / "snapshots" / revision / "model.safetensors"),
    )
    model = lficam.create_model("timm/resnet18", num_classes=3, attention="none", pretrained=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.forward_features(x)
    torch.testing.assert_close(features(model, x), expected, rtol=0, atol=0)
    assert model.backbone.pretrained_cfg["mean"] == tuple(IMAGENET_MEAN)


def test_pretrained_for_a_timm_model_without_weights_is_one_sentence():
    with pytest.raises(
        UserError, match=r"timm/resnet50t has no pretrained weights in timm .*no variant of it has weights"
    ):
        lficam.create_model("timm/resnet50t", num_classes=3, pretrained=True)


def test_a_torchvision_state_dict_loads_into_torchvision_and_timm_resnets(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(reference.state_dict(), path)
    x = torch.randn(1, 3, 64, 64)
    expected = torchvision_trunk(reference, x)
    for backbone in ("resnet18", "timm/resnet18"):  # timm's ResNets use torchvision's key names
        model = lficam.create_model(backbone, num_classes=3, attention="none", weights=str(path))
        torch.testing.assert_close(features(model, x), expected, rtol=0, atol=0)


def test_a_torchvision_file_of_another_depth_is_one_sentence_with_counts(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(
        UserError,
        match=r"do not fit resnet34: \d+ of its keys are missing, 0 are unexpected and 0 have another shape \(missing e\.g\. 'layer1\.2\.conv1\.weight'\)",
    ):
        lficam.create_model("resnet34", num_classes=3, weights=str(tmp_path / "r18.pth"))


# The pretrained weights' normalisation reaches the data config


def test_timm_pretrained_normalisation_replaces_the_data_sets_and_is_recorded(tmp_path):
    # timm's Inception-v3 weights expect mean 0.5 and std 0.5 (its pretrained_cfg), unlike ImageNet's
    cfg = compose_train(
        [*TINY, "model=timm", "model.backbone=timm/inception_v3", "model.options.pretrained=true"], tmp_path
    )
    assert "mean" not in cfg.data  # the shapes' data module uses its own default, mean 0.5 and std 0.25
    assert resolve_normalization(cfg) == "pretrained: timm/inception_v3.tv_in1k pretrained_cfg"
    assert list(cfg.data.std) == [0.5, 0.5, 0.5] and cfg.model.normalization_used.startswith("pretrained")


def test_torchvision_weight_normalisation_unless_the_user_sets_one_or_asks_for_the_data_sets(
    tmp_path, monkeypatch
):
    base = [*TINY, "model=resnet50", "model.options.weights=IMAGENET1K_V2"]
    cfg = compose_train(base, tmp_path)
    assert resolve_normalization(cfg) == "pretrained: torchvision ResNet50_Weights.IMAGENET1K_V2"
    assert list(cfg.data.mean) == IMAGENET_MEAN and list(cfg.data.std) == IMAGENET_STD
    cfg = compose_train([*base, "model.normalization=dataset"], tmp_path)
    assert resolve_normalization(cfg) == "dataset" and "mean" not in cfg.data
    monkeypatch.setattr(
        "lficam.training.finetune._user_overrides", lambda: ["+data.mean=[0.1,0.2,0.3]", "model=resnet50"]
    )
    cfg = compose_train([*base, "+data.mean=[0.1,0.2,0.3]"], tmp_path)
    assert resolve_normalization(cfg) == "dataset" and list(cfg.data.mean) == [0.1, 0.2, 0.3]
    # random weights or a local file carry no normalisation; asking for the weights' one then is a sentence
    cfg = compose_train([*TINY, "model=resnet50"], tmp_path)
    assert resolve_normalization(cfg) == "dataset" and "mean" not in cfg.data
    cfg = compose_train([*TINY, "model=resnet50", "model.normalization=pretrained"], tmp_path)
    with pytest.raises(
        UserError, match=r"model\.normalization=pretrained, but resnet50 starts from weights without"
    ):
        resolve_normalization(cfg)


def test_a_weights_file_with_a_pickled_system_call_names_the_blocked_global(tmp_path):
    from tests.test_loading import _SystemCall

    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _SystemCall(f"touch {marker}")}, evil)
    with pytest.raises(UserError) as refused:
        lficam.create_model("resnet18", num_classes=3, weights=str(evil))
    message = str(refused.value)
    assert (
        f"Could not read {str(evil)!r} as a plain state dict (it pickles the Python global posix.system,"
        in message
    )
    assert "Weights only load failed" not in message
    assert not marker.exists()
