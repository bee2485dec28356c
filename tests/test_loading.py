"""lficam.load: a checkpoint or safetensors export back to an eval-mode model; foreign files refused safely."""

from __future__ import annotations

import json
import pickle
import re
from functools import partial
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import lficam
from lficam.checkpoints.loading import (
    check_compatible,
    model_config_of_checkpoint,
    network_state_dict,
    read_checkpoint,
)
from lficam.core.errors import UserError
from lficam.data import ShapesDataModule
from lficam.export import export
from lficam.training.module import LitClassifier
from tests.conftest import quiet_trainer

CONFIG = {"backbone": "cifar_resnet20", "num_classes": 4, "attention": "lficam", "block": "auto"}


def write_checkpoint(path: Path, model_config: dict | None = None) -> LitClassifier:
    """One real training step through Lightning, saved as Lightning saves it (with the data module's state)."""
    config = dict(model_config or CONFIG)
    torch.manual_seed(0)
    data = ShapesDataModule(
        image_size=16, num_classes=4, train_size=8, val_size=4, test_size=4, batch_size=4, cache_dir=None
    )
    module = LitClassifier(
        lficam.create_model(**config),
        partial(torch.optim.SGD, lr=0.1),
        num_classes=4,
        model_config=OmegaConf.create(config),
    )  # Hydra hands a DictConfig
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(path)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LitClassifier]:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    return path, write_checkpoint(path)


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_same_model(trained) -> None:
    path, module = trained
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled class in our checkpoints
    assert raw["hyper_parameters"]["model_config"] == CONFIG
    assert type(raw["hyper_parameters"]["model_config"]) is dict
    model = lficam.load(path)
    assert not model.training
    assert model.lficam_metadata["input"]["image_size"] == 16
    assert model.lficam_metadata["input"]["mean"] == [0.5, 0.5, 0.5]
    assert model.lficam_metadata["class_names"] == ["disk", "square", "triangle", "star"]
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    module.net.eval()
    with torch.no_grad():
        expected, got = module.net(images), model(images)
    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.attention, expected.attention)
    assert got.attention.shape == (3, 4, 4)


def test_safetensors_export_loads_without_hydra(trained, tmp_path: Path) -> None:
    path, module = trained
    export(path, "safetensors", tmp_path / "m.safetensors")
    model = lficam.load(tmp_path / "m.safetensors")
    assert model.lficam_metadata["model_config"] == CONFIG
    for name, tensor in module.net.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling this creates a file

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model_config": CONFIG}, "x": Payload()}, evil)
    with pytest.raises(
        UserError,
        match=r"^Refusing .*evil\.ckpt.*without running code \(it pickles the Python global io\.open,",
    ):
        lficam.load(evil)
    assert not marker.exists()
    # the file really is dangerous: a plain unpickler runs the payload
    with evil.open("rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


class _SystemCall:
    """Pickles as ``os.system(command)``: a call that a plain unpickler would run."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_a_pickled_system_call_is_refused_naming_the_blocked_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _SystemCall(f"touch {marker}")}, evil)
    with pytest.raises(UserError) as refused:
        lficam.load(evil)  # weights_only: the call is never made
    message = str(refused.value)
    assert "it pickles the Python global posix.system, which is never loaded or called" in message
    assert "Weights only load failed" not in message and "\n" not in message
    assert message.endswith("use a .ckpt written by lficam's train.py or a .safetensors export.")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)) * 8, "loads safely without running code"),
        (b"", "loads safely without running code"),
        (pickle.dumps(OmegaConf.create({"a": 1})), "loads safely without running code"),
    ],
    ids=["random-bytes", "empty", "pickled-class"],
)
def test_foreign_files_are_refused_with_one_sentence(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "foreign.ckpt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        lficam.load(path)
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_is_refused(trained, tmp_path: Path) -> None:
    path, _ = trained
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.ckpt"):
        lficam.load(cut)


def test_checkpoint_without_model_config_is_refused(trained, tmp_path: Path) -> None:
    path, _ = trained
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["hyper_parameters"]["model_config"]
    torch.save(checkpoint, tmp_path / "bare.ckpt")
    with pytest.raises(UserError, match=r"no hyper_parameters\['model_config'\]"):
        lficam.load(tmp_path / "bare.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="holds no 'state_dict'"):
        lficam.load(tmp_path / "plain.pt")


def test_weights_of_another_backbone_are_refused(trained, tmp_path: Path) -> None:
    path, _ = trained
    checkpoint = torch.load(path, weights_only=True)
    # 20-layer weights; ResNet-32 has 2 more blocks in each of 3 stages, 12 entries each (2 convs, 2 BNs × 5)
    checkpoint["hyper_parameters"]["model_config"]["backbone"] = "cifar_resnet32"
    torch.save(checkpoint, tmp_path / "relabelled.ckpt")
    with pytest.raises(
        UserError,
        match=r"weights do not fit 'cifar_resnet32' with attention 'lficam' \(72 missing, 0 unexpected",
    ):
        lficam.load(tmp_path / "relabelled.ckpt")


def test_resuming_with_another_backbone_is_refused(trained) -> None:
    path, _ = trained
    stored = model_config_of_checkpoint(read_checkpoint(path), path)
    check_compatible(stored, dict(CONFIG), path)  # the same model passes
    with pytest.raises(
        UserError,
        match=r"trained with backbone='cifar_resnet20' but this run configures "
        r"backbone='resnet18'; choose the matching",
    ):
        check_compatible(stored, {**CONFIG, "backbone": "resnet18"}, path)


def test_tampered_safetensors_metadata_is_refused(trained, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path, _ = trained
    export(path, "safetensors", tmp_path / "m.safetensors")
    state = load_file(tmp_path / "m.safetensors")
    save_file(state, tmp_path / "no_meta.safetensors")
    with pytest.raises(UserError, match="no 'lficam' JSON with a model_config"):
        lficam.load(tmp_path / "no_meta.safetensors")
    meta = {"model_config": {**CONFIG, "attention": "none"}}
    save_file(state, tmp_path / "other.safetensors", metadata={"lficam": json.dumps(meta)})
    with pytest.raises(
        UserError, match=r"do not fit 'cifar_resnet20' with attention 'none' \(0 missing, \d+ unexpected"
    ):
        lficam.load(tmp_path / "other.safetensors")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nothing\.ckpt' does not exist"):
        lficam.load(tmp_path / "nothing.ckpt")


def _train_config(tmp_path: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[1]
    paths = [
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.log_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *paths])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model=cifar_resnet32", "data.num_classes=4"],
            "trained with backbone='cifar_resnet20' but this run configures backbone='cifar_resnet32'",
        ),
        (
            ["attention=none", "data.num_classes=4"],
            "trained with attention='lficam' but this run configures attention='none'",
        ),
        ([], "trained with num_classes=4 but this run configures num_classes=10"),
    ],
)
def test_train_refuses_to_resume_another_architecture(trained, tmp_path: Path, overrides, message) -> None:
    from lficam.training.task import train

    path, _ = trained
    cfg = _train_config(
        tmp_path,
        [
            *overrides,
            f"ckpt_path={path}",
            "data.cache_dir=null",
            "data.train_size=8",
            "data.val_size=4",
            "data.test_size=4",
            "logger=none",
            "callbacks=none",
        ],
    )
    with pytest.raises(UserError, match=re.escape(message)):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was trained or written


def test_train_refuses_a_malicious_checkpoint(tmp_path: Path) -> None:
    from lficam.training.task import train

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "loops": Payload()}, evil)
    cfg = _train_config(
        tmp_path,
        [
            f"ckpt_path={evil}",
            "data.cache_dir=null",
            "data.train_size=8",
            "data.val_size=4",
            "data.test_size=4",
            "logger=none",
            "callbacks=none",
        ],
    )
    with pytest.raises(UserError, match="loads safely without running code"):
        train(cfg)
    assert not marker.exists()


def test_network_weights_are_taken_from_plain_and_compiled_modules() -> None:
    a, b = torch.ones(2), torch.zeros(3)
    module_state = {"net.fc.weight": a, "net._orig_mod.fin.w": b, "val_acc_best.max_value": torch.tensor(0.5)}
    assert network_state_dict(module_state) == {"fc.weight": a, "fin.w": b}
