"""The command-line layer (lficam/cli/commands.py): one exit code for a user's mistake, Ctrl-C, unread + overrides,
unwritable run folders and exports, oversized images, and Lightning's advertising tips.

Tests run as root here, and root may write into a chmod-555 folder, so "cannot be written" is made with paths
no permission bit decides: a folder under /proc (nothing can be created there) and a folder whose parent is
a file (``<file>/sub``).
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from PIL import Image

from lficam import cli
from lficam.cli import run_task
from lficam.core.errors import UserError
from lficam.core.known_warnings import quiet_known_warnings
from lficam.explain import command as explain
from lficam.export import export
from lficam.training.callbacks import RichNetworkSummary
from tests import warm_python
from tests.conftest import ROOT, SMALL_MODEL, compose_train, one_step_checkpoint, subprocess_env

MODEL_CONFIG = SMALL_MODEL
# a run of two short epochs on 16 px images: seconds on a CPU
SHORT = [
    "data.image_size=16",
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.attention_overlays=null",
    "test=false",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved by a Lightning Trainer after one training step, as python train.py writes them."""
    return one_step_checkpoint(tmp_path_factory.mktemp("ckpt"), MODEL_CONFIG)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


# ------------------------------------------------------------------ item 11: one exit code for a mistake


def test_a_config_value_that_cannot_be_built_is_one_sentence_and_exit_code_2(tmp_path, caplog):
    # +data.foo=1 reaches the data module's constructor: instantiate raised InstantiationException (exit 1)
    cfg = compose_train([*SHORT, "+data.foo=1"], tmp_path)
    with pytest.raises(SystemExit) as exit_, caplog.at_level(logging.ERROR, logger="lficam"):
        run_task(cfg)
    assert exit_.value.code == 2
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert message.startswith(
        "Cannot build data (lficam.data.shapes_datamodule.ShapesDataModule) from the config (TypeError: "
    )
    assert "unexpected keyword argument 'foo'" in message
    assert "check the data.* values" in message
    assert f"the run folder {tmp_path}" in message
    assert "\n" not in message and "Traceback" not in caplog.text


def test_an_interpolation_that_does_not_resolve_is_one_sentence(caplog):
    values = OmegaConf.create({"data": {"root": "${oc.env:LFICAM_NO_SUCH_VARIABLE}"}})
    with pytest.raises(SystemExit) as exit_, caplog.at_level(logging.ERROR, logger="lficam"):
        cli.guarded(lambda: values.data.root)
    assert exit_.value.code == 2
    assert caplog.records[-1].getMessage() == (
        "The config value 'data.root' cannot be used (KeyError raised while resolving interpolation: "
        "\"Environment variable 'LFICAM_NO_SUCH_VARIABLE' not found\"); check it with --cfg job."
    )


def test_a_bug_keeps_its_traceback_and_a_constructors_user_error_keeps_its_sentence(caplog):
    from hydra.utils import instantiate

    with pytest.raises(ZeroDivisionError):
        cli.guarded(lambda: 1 / 0)
    with pytest.raises(SystemExit) as exit_, caplog.at_level(logging.ERROR, logger="lficam"):
        cli.guarded(lambda: instantiate({"_target_": f"{__name__}._refuse"}))
    assert exit_.value.code == 2
    assert caplog.records[-1].getMessage() == "data.batch_size=0 must be at least 1."


def _refuse() -> None:
    raise UserError("data.batch_size=0 must be at least 1.")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["no_such_key=1"], "Could not override 'no_such_key'."),
        (["model=resnet9"], "Available options in 'model'"),
        (["trainer.max_epochs=[1"], "no viable alternative at input '[1'"),
    ],
)
def test_mistakes_hydra_finds_before_the_task_exit_with_2(argv, expected, tmp_path, capsys):
    """Composition errors exited with Hydra's 1; they keep Hydra's own words (tests/test_sweeps.py pins them)."""
    assert cli.train([*argv, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "nearest"),
    [
        ("trainer.max_epoch=1", "trainer.max_epochs=1"),  # a misspelt key
        ("trainr.max_epochs=1", "trainer.max_epochs=1"),  # a misspelt group
        ("data.batchsize=16", "data.batch_size=16"),
    ],
)
def test_a_misspelt_key_is_answered_with_the_nearest_existing_one(override, nearest, tmp_path, capsys):
    """Hydra's advice, +trainer.max_epoch=1, adds a key the Trainer then refuses (issue 17, 12b)."""
    assert cli.train([override, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    written = override.split("=")[0]
    assert capsys.readouterr().err.strip() == (
        f"Error: The config has no key {written!r}: did you mean {nearest} (--cfg job prints the config's keys)?"
    )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------- item 11: Ctrl-C


class InterruptAt(pl.Callback):
    """Ctrl-C at the start of a given epoch (what Python raises in the main thread on SIGINT)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("epoch", [0, 1])
def test_ctrl_c_says_which_checkpoint_resumes_the_run_and_exits_130(epoch, tmp_path, capsys):
    cfg = compose_train(SHORT, tmp_path)
    with open_dict(cfg):
        cfg.callbacks.interrupt = {"_target_": f"{__name__}.InterruptAt", "epoch": epoch}
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_:
            run_task(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    assert exit_.value.code == 130
    last = tmp_path / "checkpoints" / "last.ckpt"
    err = capsys.readouterr().err.strip().splitlines()[-1]
    if epoch == 1:  # epoch 0 ended and wrote last.ckpt: that is what resumes the run
        assert last.is_file()
        assert err == (
            f"Interrupted; resume from the last complete epoch with the same command and ckpt_path={last} "
            f"(run folder {tmp_path})."
        )
        assert torch.load(last, weights_only=True)["epoch"] == 0
    else:
        assert not last.exists()
        assert err.startswith("Interrupted before the first epoch ended, so no checkpoint was written (")
        assert "there is nothing to resume" in err


# --------------------------------------------------------------------------- item 11: unread + overrides


def test_a_plus_override_that_nothing_reads_is_named_in_a_warning(checkpoint, tmp_path, caplog, capsys):
    out = tmp_path / "model.safetensors"
    argv = [f"ckpt_path={checkpoint}", "format=safetensors", f"output={out}", "+foo.bar=1", "++opset=17"]
    with caplog.at_level(logging.WARNING, logger="lficam"):
        assert cli.export(argv) == 0
    assert out.is_file()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "+foo.bar=1 has no effect: nothing reads 'foo' (the export config has no top-level key of that name); "
        "check its spelling (--cfg job prints the config)."
    ]  # ++opset=17 sets a key the config has: no warning
    assert capsys.readouterr().out.startswith("safetensors: wrote ")


# --------------------------------------------------------------------- item 6: what cannot be written


@pytest.mark.parametrize("where", ["proc", "file_parent"])
def test_a_run_folder_that_cannot_be_made_is_one_sentence(where, a_file, capsys):
    run_dir = "/proc/lficam-cannot-exist" if where == "proc" else str(a_file / "sub")
    assert cli.train([f"hydra.run.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    reason = "No such file or directory" if where == "proc" else f"{a_file} is a file, not a folder"
    assert err == (
        f"Error: the run folder cannot be written: {run_dir!r} ({reason}); give a folder you can write with "
        "hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for -m).\n"
    )


@pytest.mark.slow
def test_a_run_folder_that_exists_but_cannot_be_written_is_one_sentence(tmp_path):
    """/proc/self exists; nothing can be created in it (Hydra's log file is the first thing it writes)."""
    result = warm_python.run(
        [sys.executable, str(ROOT / "eval.py"), "hydra.run.dir=/proc/self"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == (
        "Error: the run folder cannot be written: '/proc/self/eval.log' (No such file or directory); give a "
        "folder you can write with hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for -m).\n"
    )


@pytest.mark.parametrize("format", ["onnx", "torchscript", "safetensors"])
@pytest.mark.parametrize("where", ["proc", "file_parent"])
def test_an_export_into_a_folder_that_cannot_be_written_is_one_sentence(format, where, checkpoint, a_file):
    folder = Path("/proc/lficam-cannot-exist") if where == "proc" else a_file / "sub"
    output = folder / f"model.{format}"
    with pytest.raises(UserError) as error:
        export(checkpoint, format, output)
    reason = "No such file or directory" if where == "proc" else f"{a_file} is a file, not a folder"
    assert str(error.value) == (
        f"Cannot write the export {str(output)!r} ({reason}): choose an output=<file> in a folder you can write."
    )


def test_the_export_command_says_so_with_exit_code_2(checkpoint, a_file, capsys):
    output = a_file / "model.onnx"
    assert cli.export([f"ckpt_path={checkpoint}", f"output={output}"]) == 2
    assert capsys.readouterr().err == (
        f"Error: Cannot write the export {str(output)!r} ({a_file} is a file, not a folder): choose an "
        "output=<file> in a folder you can write.\n"
    )


def test_explain_into_a_folder_that_cannot_be_written_is_one_sentence(checkpoint, a_file, tmp_path, capsys):
    picture = tmp_path / "red.png"
    Image.new("RGB", (20, 30), (255, 0, 0)).save(picture)
    out = a_file / "pictures"
    argv = [f"ckpt_path={checkpoint}", f"images=[{picture}]", "methods=[own]", f"output_dir={out}"]
    assert cli.explain(argv) == 2
    assert capsys.readouterr().err == (
        f"Error: Cannot write the pictures into output_dir={str(out)!r} ({a_file} is a file, not a folder): "
        "choose a folder you can write.\n"
    )


# ------------------------------------------------------------------------- item 10: decompression bombs


def test_a_15000_pixel_square_png_is_refused_with_the_limit_and_how_to_lift_it(checkpoint, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("1", (15_000, 15_000)).save(big)  # 1 bit a pixel, all black: a few kB on disk
    assert big.stat().st_size < 100_000
    limit = Image.MAX_IMAGE_PIXELS
    argv = [f"ckpt_path={checkpoint}", f"images=[{big}]", f"output_dir={tmp_path / 'out'}"]
    assert cli.explain(argv) == 2  # was a DecompressionBombError traceback
    assert capsys.readouterr().err == (
        f"Error: Image {str(big)!r} has 15000×15000 = 225,000,000 pixels, more than max_image_pixels=89478485 "
        "(a guard against decompression bombs): if you trust the file, raise the limit, e.g. "
        "max_image_pixels=225000000, or lift it with max_image_pixels=null.\n"
    )
    assert limit == Image.MAX_IMAGE_PIXELS  # PIL's own setting is left as it was
    assert not (tmp_path / "out").exists()


def test_max_image_pixels_is_the_limit_and_null_lifts_it(tmp_path):
    picture = tmp_path / "small.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(picture)  # 30×20 = 600 pixels
    with pytest.raises(UserError, match=r"has 30×20 = 600 pixels, more than max_image_pixels=599 "):
        explain.read_images([str(picture)], 8, max_pixels=599)
    for limit in (600, None):
        images = explain.read_images([str(picture)], 8, max_pixels=limit)
        assert images.shape == (1, 3, 8, 8)
        assert torch.allclose(images, torch.full_like(images, 200 / 255))


def test_the_default_limit_is_pils_and_a_bad_one_is_a_sentence(checkpoint, tmp_path, capsys):
    # explain.yaml states the number; it is PIL's own default guard
    assert explain.MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    assert OmegaConf.load(ROOT / "conf" / "explain.yaml").max_image_pixels == explain.MAX_IMAGE_PIXELS
    picture = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(picture)
    argv = [f"ckpt_path={checkpoint}", f"images=[{picture}]", "max_image_pixels=-5"]
    assert cli.explain(argv) == 2
    assert capsys.readouterr().err == (
        "Error: max_image_pixels must be a positive whole number or null, got -5.\n"
    )


# ---------------------------------------------------------------------- Lightning's advertising tips


def test_lightning_tips_are_silenced():
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    handlers = {name: Collect() for name in names}
    for name, handler in handlers.items():
        logging.getLogger(name).addHandler(handler)
    try:
        quiet_known_warnings()
        pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        # train.py's own summary callback: Lightning's "already configured" note is not for users either
        pl.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[RichNetworkSummary()]
        )
    finally:
        for name, handler in handlers.items():
            logging.getLogger(name).removeHandler(handler)
    assert records, "the Trainer logs its device lines through these loggers"
    assert not [r for r in records if "Tip" in r or "litlogger" in r or "litmodels" in r], records
    assert not [r for r in records if "already configured with model summary" in r], records
