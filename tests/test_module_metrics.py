"""The validation loop's attention metrics: logged names, switches, and values that can be predicted."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lficam.core.errors import UnknownNameError, UserError
from lficam.core.maps import upsample as upsample_maps
from lficam.metrics import energy_pointing_game, mask_iou
from lficam.models import create_model
from lficam.training.module import LitClassifier
from tests.conftest import quiet_trainer


class MaskedImages(Dataset):
    """Random 16 px images with a square object mask, as the data modules' batches look."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 16, 16, generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.masks = torch.zeros(n, 16, 16, dtype=torch.bool)
        for i in range(n):
            y, x = torch.randint(0, 9, (2,), generator=g).tolist()
            self.masks[i, y : y + 7, x : x + 7] = True

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[i],
            "label": self.labels[i],
            "mask": self.masks[i],
            "index": torch.tensor(i),
        }


def frozen_module(lr: float = 0.0, **options: object) -> LitClassifier:
    """With lr 0 and batch-norm momentum 0 training changes nothing, so maps repeat from epoch to epoch."""
    torch.manual_seed(0)
    net = create_model("cifar_resnet20", num_classes=3)
    if lr == 0:
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.0
    optimizer = functools.partial(torch.optim.SGD, lr=lr)
    return LitClassifier(net, optimizer, num_classes=3, **options)


class EveryEpoch(pl.Callback):
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(
    module: LitClassifier, epochs: int = 2, shuffle_val: bool = False
) -> tuple[list[dict[str, float]], DataLoader]:
    """Trains on 1 batch per epoch, validates on 2 batches of 6; returns what was logged after each epoch."""
    val = DataLoader(MaskedImages(12, seed=1), batch_size=6, shuffle=shuffle_val)
    record = EveryEpoch()
    trainer = quiet_trainer(
        max_epochs=epochs, limit_train_batches=1, num_sanity_val_steps=1, callbacks=[record]
    )
    trainer.fit(module, DataLoader(MaskedImages(16, seed=0), batch_size=8), val)
    return record.logged, val


def test_validation_logs_attention_metrics_with_predictable_values():
    module = frozen_module(
        stability_probe_size=8,
        input_stability=["noise", "flip"],
        input_stability_images=8,
        input_stability_noise=0.0,
    )
    logged, val = fit(module)
    logged = logged[-1]
    # Energy pointing game and mask IoU are the means over the validation images of the functionals.
    module.net.eval()
    with torch.no_grad():
        batches = list(val)
        maps = torch.cat([upsample_maps(module.net(b["image"]).attention, (16, 16)) for b in batches])
    masks = torch.cat([b["mask"] for b in batches])
    assert logged["val/attn/energy_pointing_game"] == pytest.approx(
        energy_pointing_game(maps, masks).nanmean().item(), rel=1e-5
    )
    assert logged["val/attn/mask_iou"] == pytest.approx(mask_iou(maps, masks).nanmean().item(), rel=1e-5)
    # Nothing changes between epochs: the probe maps repeat exactly.
    assert logged["val/attn/stability_epoch_iou"] == pytest.approx(1.0)
    assert logged["val/attn/stability_epoch_spearman"] == pytest.approx(1.0)
    # Noise of σ = 0 changes nothing: perfectly stable, no sensitivity.
    assert logged["val/attn/stability_noise_iou"] == pytest.approx(1.0)
    assert logged["val/attn/stability_noise_max_sensitivity"] == pytest.approx(0.0)
    # A flip is a real change for a network that is not flip-equivariant: similarity below 1.
    assert logged["val/attn/stability_flip_spearman"] < 0.999
    assert logged["val/attn/stability_flip_avg_sensitivity"] > 0
    assert "val/attn/deletion_auc" not in logged  # costly metrics are off by default
    assert module.hparams.input_stability == ["noise", "flip"]  # plain lists go into checkpoints


def test_epoch_stability_starts_at_the_second_epoch_and_sees_learning():
    module = frozen_module(lr=0.5, stability_probe_size=8, input_stability=[])
    first, second = fit(module)[0]
    assert "val/attn/stability_epoch_iou" not in first  # nothing to compare with after one epoch
    # A learning step moves the maps: the probe's maps differ from the previous epoch's.
    assert -1 <= second["val/attn/stability_epoch_spearman"] < 0.999
    # A shuffled validation loader puts other images first: they are never compared as if they were the same.
    _, second = fit(frozen_module(stability_probe_size=4, input_stability=[]), shuffle_val=True)[0]
    assert "val/attn/stability_epoch_iou" not in second


def test_switches_turn_metrics_off():
    module = frozen_module(attention_metrics=False, stability_probe_size=0, input_stability=[])
    logged = fit(module, epochs=1)[0][-1]
    assert "val/attn/pointing_game" in logged
    assert not any(
        k.startswith(("val/attn/stability", "val/attn/energy", "val/attn/mask_iou")) for k in logged
    )


def test_faithfulness_on_chosen_epochs_and_images():
    module = frozen_module(
        faithfulness_every_n_epochs=1,
        faithfulness_images=4,
        faithfulness_pixels_per_step=64,
        faithfulness_metrics=["deletion", "insertion", "average_drop", "road"],
    )
    logged = fit(module, epochs=1)[0][-1]
    for key in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road_combined"):
        assert 0 <= abs(logged[f"val/attn/{key}"]) <= 1, key
    assert 0 <= logged["val/attn/average_drop"] <= 100
    assert "val/attn/increase_in_confidence" not in logged
    with pytest.raises(UnknownNameError, match="attention metric"):
        frozen_module(faithfulness_metrics=["deletion", "pixel_flipping"])


def test_diagnostics_run_the_model_through_forward_in_channels_last():
    module = frozen_module(
        channels_last=True,
        stability_probe_size=0,
        input_stability=["flip"],
        input_stability_images=4,
        faithfulness_every_n_epochs=1,
        faithfulness_images=2,
        faithfulness_pixels_per_step=128,
        faithfulness_metrics=["deletion", "average_drop"],
    )
    layouts = []
    module.net.register_forward_pre_hook(
        lambda net, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    logged = fit(module, epochs=1)[0][-1]
    assert "val/attn/stability_flip_iou" in logged and "val/attn/deletion_auc" in logged
    # 1 sanity + 1 training + 2 validation batches, then the flipped images, the clean and deletion images
    assert len(layouts) > 4
    assert all(layouts)  # every image the diagnostics sent went through forward's channels-last conversion


def test_unknown_module_option_is_one_sentence():
    with pytest.raises(UserError, match="Unknown module option 'faithfulness_every_epoch': choose among"):
        frozen_module(faithfulness_every_epoch=1)
