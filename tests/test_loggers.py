"""Loggers, offline: CSV (default), TensorBoard, Weights & Biases and lists of them, with hyper-parameters,
parameter counts and the attention overlays each validation epoch."""

from __future__ import annotations

import csv
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from lficam.cli import run_task
from lficam.core.errors import UserError
from lficam.models import count_parameters, create_model
from lficam.training.callbacks import AttentionOverlays
from lficam.training.model_config import model_config_of
from lficam.training.task import log_hyperparameters

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
TINY = [
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "data.image_size=16",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "test=false",
]


def compose_train(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train", overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/run", *TINY, *overrides]
        )


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of an offline ``run-*.wandb`` file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if room >= 7 else (0, 0, 0)
        if room < 7 or (kind == 0 and length == 0):  # block trailer or padding
            pos += room
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def _key(item: object) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_is_offline_unless_wandb_mode_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_train(tmp_path, "logger=wandb", "task_name=sweep_a")
    wandb = cfg.logger.wandb
    assert wandb.mode == "offline"
    assert wandb.offline is False  # Lightning's flag would force offline even when WANDB_MODE=online
    assert wandb.log_model is False
    assert (wandb.project, wandb.group) == ("lficam", "sweep_a")
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose_train(tmp_path, "logger=wandb").logger.wandb.mode == "online"


def test_online_wandb_without_an_api_key_is_one_sentence(tmp_path, monkeypatch):
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_MODE", "online")
    logger = instantiate(compose_train(tmp_path, "logger=wandb").logger.wandb)
    with pytest.raises(UserError) as error:
        log_hyperparameters([logger], {"seed": 1})
    assert str(error.value) == (
        "W&B could not start a run (No API key configured); log offline with WANDB_MODE=offline (what "
        "logger=wandb does by default) or run `wandb login`."
    )


def test_logger_lists_compose(tmp_path):
    assert set(compose_train(tmp_path).logger) == {"csv"}
    assert set(compose_train(tmp_path, "logger=many").logger) == {"csv", "tensorboard", "wandb"}
    assert set(compose_train(tmp_path, "logger=[csv,tensorboard]").logger) == {"csv", "tensorboard"}


def test_overlays_are_rendered_only_for_image_loggers_on_schedule(tmp_path, monkeypatch):
    callback = AttentionOverlays(str(tmp_path), num_images=2, log_every_n_epochs=2)
    monkeypatch.setattr(callback, "_probe", lambda trainer: pytest.fail("rendered without an image logger"))
    trainer = SimpleNamespace(loggers=[CSVLogger(tmp_path)], is_global_zero=True)
    assert callback.log_images(trainer, None) is None

    calls = []
    monkeypatch.setattr(callback, "log_images", lambda trainer, module: calls.append(trainer.current_epoch))
    for epoch in range(5):
        state = SimpleNamespace(sanity_checking=False, current_epoch=epoch)
        callback.on_validation_epoch_end(state, None)
    assert calls == [1, 3]
    callback.log_to_loggers = False
    callback.on_validation_epoch_end(SimpleNamespace(sanity_checking=False, current_epoch=5), None)
    assert calls == [1, 3]


@pytest.mark.slow
def test_csv_tensorboard_and_wandb_offline_get_metrics_hparams_and_overlays(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(
        tmp_path, "logger=many", "callbacks.attention_overlays.num_images=4", "task_name=loggers_test"
    )
    best = run_task(cfg)  # the optimized_metric, val/acc_best
    import wandb

    assert wandb.run is None  # closed by run_task: the next job of a sweep gets its own run

    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    val_acc = float(next(r["val/acc"] for r in rows if r.get("val/acc")))
    assert best == pytest.approx(val_acc)  # one epoch: the best is the only one
    parameters = count_parameters(create_model(**model_config_of(cfg)))
    for hparams in (run / "csv" / "hparams.yaml", run / "tensorboard" / "hparams.yaml"):
        logged = yaml.safe_load(hparams.read_text())
        assert logged["parameters/total"] == parameters
        assert logged["config"]["model"]["backbone"] == "cifar_resnet20"

    # the overlay grid: 4 images × (image, object mask, own map) panels of 64 px in one row, 2 px padding
    width, height = 12 * (64 + 2) + 2, 64 + 2 + 2
    data = instantiate(cfg.data)
    data.setup("validate")
    first = data.denormalize(data.val_set[0]["image"].unsqueeze(0))
    expected_tile = F.interpolate(first, size=(64, 64), mode="nearest")[0].permute(1, 2, 0)

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx([val_acc])
    assert {"train/loss_epoch", "val/loss", "val/attn/pointing_game"} <= set(events.Tags()["scalars"])
    (image,) = events.Images("val/attention_overlays")  # one validation epoch, one picture
    assert (image.width, image.height) == (width, height)
    pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(image.encoded_image_string))))
    tile = pixels[2:66, 2:66, :3].float() / 255
    assert torch.allclose(tile, expected_tile, atol=1 / 255 + 1e-6)

    (wandb_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, runs = [], {}, []
    for record in wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            runs.append(record.run)
    assert (runs[0].project, runs[0].run_group) == ("lficam", "loggers_test")
    assert config["parameters/total"] == parameters
    assert [h["val/acc"] for h in history if "val/acc" in h] == pytest.approx([val_acc])
    assert any("train/loss_epoch" in h for h in history)
    (pictures,) = [h for h in history if "val/attention_overlays/width" in h]
    assert (pictures["val/attention_overlays/width"], pictures["val/attention_overlays/height"]) == (
        width,
        height,
    )
    (png,) = (wandb_file.parent / "files" / "media" / "images").rglob("attention_overlays_*.png")
    assert Image.open(png).size == (width, height)
