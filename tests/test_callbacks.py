"""The network summary and the attention overlays, which reuse the validation pass's maps."""

from __future__ import annotations

import functools

import pytest
import torch

import lficam
from lficam.core.maps import upsample
from lficam.data import ShapesDataModule
from lficam.models import count_parameters
from lficam.training.callbacks import AttentionOverlays, NetworkSummary
from lficam.training.module import LitClassifier
from tests.conftest import quiet_trainer


def module(image_size: int | None = 16) -> LitClassifier:
    torch.manual_seed(0)
    net = lficam.create_model("cifar_resnet20", num_classes=4)
    data_config = {"image_size": image_size} if image_size else None
    return LitClassifier(
        net, functools.partial(torch.optim.SGD, lr=0.1), num_classes=4, data_config=data_config
    )


def test_the_summary_lists_the_network_with_its_parameters_and_flops():
    lit = module()
    table = NetworkSummary()._summary(None, lit)
    net = lit.net
    assert table.layer_names == ["backbone", "fin", "fc"]  # no metric containers
    assert table.param_nums == [
        count_parameters(net.backbone),
        count_parameters(net.fin),
        count_parameters(net.fc),
    ]
    assert table.total_parameters == count_parameters(net)
    flops = [sum(c.values()) for c in table.flop_counts.values()]
    assert all(f > 0 for f in flops)
    assert flops[2] == 2 * 64 * 4  # the FC: one multiply-add per weight for the example image
    columns = [name for name, _ in table._get_summary_data()]
    assert "FLOPs" in columns and "In sizes" not in columns
    assert "FLOPs" not in [
        name for name, _ in NetworkSummary()._summary(None, module(None))._get_summary_data()
    ]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("overlays")
    data = ShapesDataModule(
        image_size=16, num_classes=4, train_size=8, val_size=12, test_size=4, batch_size=4, cache_dir=None
    )
    overlays = AttentionOverlays(str(folder), num_images=6, log_to_loggers=False)
    lit = module()
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=1, callbacks=[overlays], default_root_dir=folder
    )
    trainer.fit(lit, datamodule=data)
    assert (folder / "final.png").is_file()
    return trainer, lit, overlays


def test_overlays_take_the_validation_maps_without_running_the_model(fitted, tmp_path):
    trainer, lit, overlays = fitted
    calls = []
    handle = lit.net.register_forward_hook(lambda *_: calls.append(1))
    try:
        batch, maps, logits = overlays.probe_with_maps(trainer, lit)
        assert calls == []  # the validation pass already saw these six images at these weights
        lit.eval()
        with torch.no_grad():
            output = lit(batch["image"])
        torch.testing.assert_close(maps, upsample(output.attention, (16, 16)))
        torch.testing.assert_close(logits, output.logits)
        overlays.dirpath = tmp_path
        assert overlays.save(trainer, lit, "again").stat().st_size > 1000
        calls.clear()
        overlays._seen_at_step -= 1  # as if training had gone on after the last validation
        _, stale_maps, _ = overlays.probe_with_maps(trainer, lit)
        assert calls == [1]  # then the model runs once, and gives the same maps
        torch.testing.assert_close(stale_maps, maps)
    finally:
        handle.remove()
