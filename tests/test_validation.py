"""Values that cannot train get one sentence before any training (lficam/training/config_checks.py), and a non-finite
loss names the checkpoint that exists, or says that none does (NonFiniteLossError.during_training)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from lficam.cli import run_task
from lficam.core.errors import NonFiniteLossError, UserError
from lficam.training.config_checks import check_data
from lficam.training.task import train
from tests.conftest import TINY, compose_train

SMALL = [
    *TINY,
    "data.image_size=16",
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "data.cache_dir=null",
    "callbacks.attention_overlays=null",
]


def _nothing_written(folder: Path) -> None:
    written = sorted(p.name for p in folder.iterdir() if p.name != ".lock")
    assert written == [], written


@pytest.mark.parametrize(
    ("override", "sentence"),
    [
        (
            "data.batch_size=0",
            "data.batch_size=0 is not a number of images per training batch; use a whole number of at least 1.",
        ),
        (
            "data.batch_size=-8",
            "data.batch_size=-8 is not a number of images per training batch; use a whole number of at least 1.",
        ),
        (
            "data.eval_batch_size=-1",
            "data.eval_batch_size=-1 is not a number of images per evaluation batch; use a whole number of at "
            "least 1.",
        ),
        (
            "data.train_size=0",
            "data.train_size=0 leaves nothing to train on; use a whole number of at least 1.",
        ),
        (
            "data.val_size=0",
            "data.val_size=0 leaves no validation images, which choose the best checkpoint (val/acc); use a whole "
            "number of at least 1.",
        ),
        (
            "optimizer.lr=-1",
            "optimizer.lr=-1 is not a learning rate; use a positive number such as optimizer.lr=0.05.",
        ),
        (
            "optimizer.momentum=-0.5",
            "torch.optim.SGD refuses the optimizer settings (Invalid momentum value: -0.5); correct the "
            "optimizer.* value it names.",
        ),
    ],
    ids=lambda value: value if "=" in value and " " not in value else "",
)
def test_values_no_training_can_use_are_one_sentence_before_anything_is_built(
    override: str, sentence: str, tmp_path: Path
) -> None:
    cfg = compose_train([*SMALL, override], tmp_path)
    with pytest.raises(UserError) as error:
        train(cfg)
    assert str(error.value) == sentence
    _nothing_written(tmp_path)


def test_fewer_training_images_than_one_batch_stops_before_training(tmp_path: Path) -> None:
    """drop_last would make it zero steps: an untrained model tested and a summary written, then exit 1."""
    cfg = compose_train([*SMALL, "data.train_size=10"], tmp_path)
    with pytest.raises(UserError) as error:
        train(cfg)
    assert str(error.value) == (
        "data.batch_size=16 is more than the 10 training images (data.train_size=10), and incomplete training "
        "batches are dropped, so not one training step would run: use data.batch_size=10 or less, or more "
        "training images."
    )
    _nothing_written(tmp_path)


def test_each_ddp_process_needs_a_whole_batch(tmp_path: Path) -> None:
    """Under DDP every process gets ⌈n / processes⌉ images (DistributedSampler pads): 24 images on 2 processes
    are 12 each, less than a batch of 16, though 24 ≥ 16 passes on one process."""
    cfg = compose_train([*SMALL, "data.train_size=24"], tmp_path)
    data = instantiate(cfg.data)
    check_data(data, cfg, processes=1)
    with pytest.raises(UserError) as error:
        check_data(data, cfg, processes=2)
    assert str(error.value) == (
        "data.batch_size=16 is more than the 12 training images that each of the 2 DDP processes gets of 24 "
        "(data.train_size=24), and incomplete training batches are dropped, so not one training step would "
        "run: use data.batch_size=12 or less, or more training images."
    )
    check_data(data, cfg, processes=1)  # 24 images, one batch of 16: trains


def test_the_task_exits_2_with_the_sentence_and_writes_no_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What train.py runs: before, zero steps, an untrained model tested, summary.json, exit 1."""
    cfg = compose_train([*SMALL, "data.train_size=10"], tmp_path)
    with caplog.at_level(logging.ERROR, logger="lficam"), pytest.raises(SystemExit) as exit_:
        run_task(cfg)
    assert exit_.value.code == 2
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "data.batch_size=16 is more than the 10 training images (data.train_size=10)"
    )
    assert record.exc_info is None  # no traceback
    assert not (tmp_path / "summary.json").exists()


def test_non_finite_loss_names_the_checkpoint_that_exists(tmp_path: Path) -> None:
    saved = tmp_path / "checkpoints" / "last.ckpt"
    saved.parent.mkdir()
    saved.write_bytes(b"a checkpoint")
    callbacks = [
        SimpleNamespace(last_model_path="", best_model_path=str(tmp_path / "checkpoints" / "gone.ckpt")),
        SimpleNamespace(last_model_path="", best_model_path=str(saved)),
    ]
    trainer = SimpleNamespace(checkpoint_callbacks=callbacks, ckpt_path=None, current_epoch=3, global_step=40)
    assert str(NonFiniteLossError.during_training(trainer, float("nan"))) == (
        f"The training loss became nan at epoch 3, step 40; training stopped and the latest checkpoint, saved "
        f"before it, is {str(saved)!r} (init_from={saved} starts a new run from its weights with a lower "
        "optimizer.lr): lower the learning rate or use gradient clipping (trainer.gradient_clip_val=1.0)."
    )
    # a resumed run that has not saved yet: the checkpoint it resumed from is the one that exists
    fresh = SimpleNamespace(checkpoint_callbacks=[], ckpt_path=str(saved), current_epoch=3, global_step=40)
    assert f"is {str(saved)!r}" in str(NonFiniteLossError.during_training(fresh, float("inf")))


def test_a_loss_that_diverges_before_any_checkpoint_says_none_exists(tmp_path: Path) -> None:
    cfg = compose_train([*SMALL, "optimizer.lr=1e30", "test=false"], tmp_path)
    with pytest.raises(NonFiniteLossError) as error:
        train(cfg)
    message = str(error.value)
    assert message.startswith("The training loss became ")
    assert message.endswith(
        "training stopped and no checkpoint had been saved yet: lower the learning rate or use gradient "
        "clipping (trainer.gradient_clip_val=1.0)."
    )
    assert "kept" not in message
    assert not (tmp_path / "checkpoints").exists()
    loss = float(message.removeprefix("The training loss became ").split(" at epoch")[0])
    assert not torch.isfinite(torch.tensor(loss))
