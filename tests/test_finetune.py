"""Fine-tuning: the backbone's learning-rate group, a frozen backbone (weights and BatchNorm statistics) that
trains again after N epochs, and the finetune_lficam experiment running one step from a cached pretrained file."""

from __future__ import annotations

import csv
import urllib.error
from functools import partial

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import lficam
from lficam.data import ShapesDataModule
from lficam.training.finetune import FreezeBackbone
from lficam.training.module import LitClassifier
from lficam.training.optimizers import parameter_groups
from lficam.training.task import build_module, train
from tests.conftest import TINY, compose_train, quiet_trainer


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_parameter_groups_split_backbone_from_head_and_fin():
    net = lficam.create_model("cifar_resnet20", num_classes=3, attention="abn")
    head, backbone = parameter_groups(net, 0.05, backbone_lr_scale=0.1)
    assert head["lr"] == 0.05 and backbone["lr"] == pytest.approx(0.005)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in net.backbone.parameters()}
    # ABN's attention branch (a copy of the last stage), its convolutions and the FC are the head
    head_ids = {id(p) for p in head["params"]}
    assert {id(p) for p in net.attention_stage.parameters()} <= head_ids and id(net.fc.weight) in head_ids
    assert len(head["params"]) + len(backbone["params"]) == len(list(net.parameters()))
    (single,) = parameter_groups(net, 0.05, backbone_lr_scale=1.0)
    assert len(single["params"]) == len(list(net.parameters()))


def test_configured_backbone_lr_scale_reaches_the_optimiser_and_survives_the_schedule(tmp_path):
    cfg = compose_train(
        [*TINY, "optimizer.backbone_lr_scale=0.1", "optimizer.lr=0.2", "scheduler=cosine"], tmp_path
    )
    module = build_module(cfg)
    assert "backbone_lr_scale" not in module.optimizer_factory.keywords  # ours, not SGD's
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert [g["lr"] for g in optimizer.param_groups] == [0.2, pytest.approx(0.02)]
    optimizer.step()
    scheduler.step()
    head_lr, backbone_lr = (g["lr"] for g in optimizer.param_groups)
    assert head_lr < 0.2 and backbone_lr == pytest.approx(0.1 * head_lr)  # the cosine scales both groups


class Snapshots(pl.Callback):
    """The backbone's full state (BatchNorm running statistics included) and the FIN's, at the start and
    after each training epoch."""

    def __init__(self) -> None:
        self.backbone: list[dict[str, torch.Tensor]] = []
        self.fin: list[dict[str, torch.Tensor]] = []

    def _take(self, module: pl.LightningModule) -> None:
        self.backbone.append({k: v.detach().clone() for k, v in module.net.backbone.state_dict().items()})
        self.fin.append({k: v.detach().clone() for k, v in module.net.fin.state_dict().items()})

    def on_train_start(self, trainer, module):
        self._take(module)

    def on_train_epoch_end(self, trainer, module):
        self._take(module)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_frozen_backbone_keeps_weights_and_batchnorm_statistics_then_trains(tmp_path):
    torch.manual_seed(0)
    data = ShapesDataModule(
        image_size=16, num_classes=3, train_size=16, val_size=8, test_size=8, batch_size=8, cache_dir=None
    )
    config = {"backbone": "cifar_resnet20", "num_classes": 3, "attention": "lficam"}
    module = LitClassifier(
        lficam.create_model(**config),
        partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-4),
        num_classes=3,
        model_config=config,
        stability_probe_size=0,
        input_stability=[],
    )
    snapshots = Snapshots()
    trainer = quiet_trainer(
        max_epochs=2, limit_val_batches=1, callbacks=[FreezeBackbone(epochs=1), snapshots]
    )
    trainer.fit(module, datamodule=data)
    start, after_frozen, after_free = snapshots.backbone
    assert _same(start, after_frozen)  # two SGD steps with weight decay and momentum: nothing moved
    assert any("running_mean" in k for k in start)  # BatchNorm statistics are in the comparison
    assert not _same(snapshots.fin[0], snapshots.fin[1])  # the FIN trained meanwhile
    moved = [k for k in start if not torch.equal(start[k], after_free[k])]
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("conv1.weight") for k in moved)
    assert all(p.requires_grad for p in module.net.backbone.parameters())  # released at the end


def test_freeze_epochs_must_be_a_count():
    with pytest.raises(lficam.core.errors.UserError, match=r"freeze_backbone\.epochs must be an integer"):
        FreezeBackbone(epochs=-1)


def _image_folder(root):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8) // (label + 1)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.mark.slow
def test_finetune_experiment_runs_one_step_from_the_cached_pretrained_resnet50(tmp_path, monkeypatch):
    # the pretrained file sits in torch's cache, as after a first download; the network is not used
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    torch.manual_seed(0)
    pretrained = torchvision.models.resnet50(weights=None).state_dict()
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    cached.parent.mkdir(parents=True)
    torch.save(pretrained, cached)
    _image_folder(tmp_path / "images")
    cfg = compose_train(
        [
            "experiment=finetune_lficam",
            f"data.root={tmp_path / 'images'}",
            "data.num_classes=2",
            "data.image_size=32",
            "data.resize_size=36",
            "data.batch_size=2",
            "data.eval_batch_size=2",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "++trainer.limit_train_batches=1",
            "++trainer.limit_val_batches=1",
            "++trainer.limit_test_batches=1",
            "++trainer.enable_progress_bar=false",
            "++trainer.enable_model_summary=false",
            "callbacks.progress_bar=null",
            "callbacks.model_summary=null",
            "callbacks.attention_overlays=null",
            # the paper FIN's 151 M parameters would make each checkpoint 1.4 GB: the light FIN for this one step
            "attention.options.fin=lite",
            "callbacks.last_checkpoint=null",
            "test=false",
        ],
        tmp_path / "run",
    )
    assert cfg.optimizer.backbone_lr_scale == 0.1 and cfg.callbacks.freeze_backbone.epochs == 1
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss_epoch"])
    # normalised as the torchvision weights' transforms, and the run's config says so
    assert cfg.model.normalization_used == "pretrained: torchvision ResNet50_Weights.IMAGENET1K_V2"
    assert list(cfg.data.mean) == [0.485, 0.456, 0.406] and list(cfg.data.std) == [0.229, 0.224, 0.225]
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    lrs = {k: float(r[k]) for r in rows for k in r if k.startswith("lr-") and r[k]}
    assert sorted(lrs.values()) == [pytest.approx(0.001), pytest.approx(0.01)]  # backbone at lr · 0.1
    # the backbone was frozen for the whole (one-epoch) run: still the cached file's weights and statistics
    checkpoint = torch.load(next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt")), weights_only=True)
    state = checkpoint["state_dict"]
    torch.testing.assert_close(
        state["net.backbone.stem.0.weight"], pretrained["conv1.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        state["net.backbone.stages.3.2.bn3.running_var"],
        pretrained["layer4.2.bn3.running_var"],
        rtol=0,
        atol=0,
    )


def test_freeze_with_zero_epochs_leaves_the_models_own_flags_alone():
    from types import SimpleNamespace

    net = lficam.create_model("cifar_resnet20", num_classes=3)
    net.backbone.stem[0].weight.requires_grad_(False)  # frozen by the user, not by the callback
    callback, module = FreezeBackbone(epochs=0), SimpleNamespace(net=net)
    for epoch in (0, 1):
        callback.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
    callback.on_train_end(SimpleNamespace(current_epoch=2), module)
    assert not net.backbone.stem[0].weight.requires_grad
    assert all(p.requires_grad for n, p in net.backbone.named_parameters() if n != "stem.0.weight")
