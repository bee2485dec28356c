"""ckpt_path resumes a run and says in one line which settings come from the checkpoint and which overrides it
ignores; init_from starts a new run from a checkpoint's weights only. Both refuse a checkpoint of another
architecture (another FIN variant included) with one sentence (lficam/training/resume.py, lficam/checkpoints/loading.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lficam.checkpoints.loading import network_state_dict, read_checkpoint
from lficam.core.errors import UserError
from lficam.training.resume import resume_banner, start_from_checkpoint
from lficam.training.task import build_module, train
from tests.conftest import compose_train
from tests.test_validation import SMALL

STEPS_PER_EPOCH = 32 // 16


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run with SGD (lr 0.05) and a cosine schedule over that one epoch (T_max=1)."""
    run = tmp_path_factory.mktemp("first")
    train(compose_train([*SMALL, "test=false"], run))
    return run / "checkpoints" / "last.ckpt"


def test_the_resume_line_names_what_comes_from_the_checkpoint_and_the_ignored_overrides(
    first_run: Path, tmp_path: Path
) -> None:
    checkpoint = read_checkpoint(first_run)
    same = compose_train([*SMALL, "test=false"], tmp_path)
    line, ignores = resume_banner(checkpoint, same, first_run)
    start = (
        f"Resuming {str(first_run)!r} (saved in epoch 0, step {STEPS_PER_EPOCH}): the weights, the optimiser "
        "state (learning rate 0 now), the scheduler state, the epoch and step counters and the best "
        "checkpoint (val/acc "
    )
    assert line.startswith(start)
    assert line.endswith(") come from it; no optimiser or scheduler setting of this run differs from it.")
    assert not ignores

    changed = compose_train([*SMALL, "test=false", "trainer.max_epochs=3", "optimizer.lr=0.001"], tmp_path)
    line, ignores = resume_banner(checkpoint, changed, first_run)
    assert line.startswith(start)
    assert line.endswith(
        ") come from it, so these settings are ignored: optimizer.lr=0.001 (checkpoint: 0.05), "
        f"scheduler.T_max=3 (checkpoint: 1); init_from={first_run} instead of ckpt_path starts a new run from "
        "its weights with them."
    )
    assert ignores


def test_a_resume_says_so_at_start_and_really_keeps_the_checkpoints_schedule(
    first_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_train(
        [*SMALL, "test=false", "trainer.max_epochs=2", "optimizer.lr=0.001", f"ckpt_path={first_run}"],
        tmp_path,
    )
    with caplog.at_level(logging.WARNING, logger="lficam"):
        train(cfg)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Resuming ")]
    assert "optimizer.lr=0.001 (checkpoint: 0.05), scheduler.T_max=2 (checkpoint: 1)" in line
    resumed = _last(tmp_path)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 2 * STEPS_PER_EPOCH)
    # as the line says: the checkpoint's learning rate and schedule, not the overrides
    assert resumed["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.05
    assert resumed["lr_schedulers"][0]["T_max"] == 1


@pytest.mark.parametrize("kind", ["ckpt", "safetensors"])
def test_init_from_loads_the_weights_only(first_run: Path, tmp_path: Path, kind: str) -> None:
    source = first_run
    if kind == "safetensors":
        from lficam.export import export

        source = tmp_path / "model.safetensors"
        export(first_run, "safetensors", source)
    cfg = compose_train([*SMALL, f"init_from={source}"], tmp_path / "run")
    module = build_module(cfg)
    assert start_from_checkpoint(cfg, module, tmp_path / "run") is None  # a new run: its logs start afresh
    trained = network_state_dict(read_checkpoint(first_run)["state_dict"])
    state = module.net.state_dict()
    assert state.keys() == trained.keys()
    for name, tensor in trained.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)


def test_init_from_starts_a_new_run_with_its_own_optimiser_schedule_and_epochs(
    first_run: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [*SMALL, "test=false", "trainer.max_epochs=2", "optimizer.lr=0.01", f"init_from={first_run}"],
        tmp_path,
    )
    train(cfg)
    new = _last(tmp_path)
    assert (new["epoch"], new["global_step"]) == (1, 2 * STEPS_PER_EPOCH)  # two epochs of its own, from 0
    assert new["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.01
    assert new["lr_schedulers"][0]["T_max"] == 2
    before = network_state_dict(read_checkpoint(first_run)["state_dict"])["fc.weight"]
    assert not torch.equal(network_state_dict(new["state_dict"])["fc.weight"], before)


@pytest.mark.parametrize("option", ["ckpt_path", "init_from"])
def test_another_fin_variant_is_one_sentence(first_run: Path, tmp_path: Path, option: str) -> None:
    cfg = compose_train([*SMALL, "attention.options.fin=lite", f"{option}={first_run}"], tmp_path)
    with pytest.raises(UserError) as error:
        train(cfg)
    assert str(error.value) == (
        f"Checkpoint {str(first_run)!r} was trained with fin='paper' but this run configures fin='lite'; "
        f"choose the matching model/attention/data or another {option}."
    )
    assert not (tmp_path / "checkpoints").exists()


def test_altered_weights_are_one_sentence_on_resume(first_run: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(first_run, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["net.fc.weight"] = torch.zeros(3, 3)
    altered = tmp_path / "altered.ckpt"
    torch.save(checkpoint, altered)
    with pytest.raises(UserError, match=r"its weights do not fit 'cifar_resnet20' with attention 'lficam' "):
        train(compose_train([*SMALL, f"ckpt_path={altered}"], tmp_path / "run"))


def test_ckpt_path_and_init_from_together_are_one_sentence(first_run: Path, tmp_path: Path) -> None:
    cfg = compose_train([*SMALL, f"ckpt_path={first_run}", f"init_from={first_run}"], tmp_path)
    with pytest.raises(UserError) as error:
        train(cfg)
    assert str(error.value) == (
        f"ckpt_path={first_run} resumes that run (its optimiser, schedule and epoch) and init_from={first_run} "
        "starts a new run from a checkpoint's weights; give only one of them."
    )
