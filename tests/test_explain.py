"""python -m lficam.explain: end to end on a Lightning checkpoint and PNGs written here, and its error sentences."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lficam import cli
from lficam.explain import command as explain
from tests import warm_python
from tests.conftest import SMALL_MODEL, one_step_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = SMALL_MODEL


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved by a Lightning Trainer after one training step, as python train.py writes them."""
    return one_step_checkpoint(tmp_path_factory.mktemp("ckpt"), MODEL_CONFIG)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    paths = [folder / "red.png", folder / "noise.jpg"]
    red = np.zeros((20, 30, 3), np.uint8)
    red[5:15, 10:20, 0] = 255
    Image.fromarray(red).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(paths[1])
    return paths


def _args(
    checkpoint: Path, images: list[Path], out: Path, methods: str = "[own,gradcam,scorecam]"
) -> list[str]:
    return [
        f"ckpt_path={checkpoint}",
        f"images=[{','.join(str(p) for p in images)}]",
        f"methods={methods}",
        f"output_dir={out}",
        "image_size=16",
    ]


def test_writes_one_picture_per_image_with_every_map_and_the_prediction(
    checkpoint: Path,
    pictures: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lficam.core.pictures

    saved: dict[str, tuple] = {}
    real_save = lficam.core.pictures.save_side_by_side

    def spy(path, image, maps, title=""):
        saved[Path(path).name] = (image, maps, title)
        return real_save(path, image, maps, title)

    monkeypatch.setattr(explain, "save_side_by_side", spy)
    out = tmp_path / "explained"
    assert cli.explain(_args(checkpoint, pictures, out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["noise.png", "red.png"]
    with Image.open(out / "red.png") as picture:
        assert picture.width > 3 * picture.height  # four panels side by side

    # The title's class and probability are the model's own, on the image as read, resized and normalised.
    net, _ = explain.load_checkpoint(checkpoint)
    x = (explain.read_images([str(p) for p in pictures], 16) - 0.5) / 0.25
    with torch.no_grad():
        probs = net(x).logits.softmax(dim=1)
    for i, name in enumerate(["red.png", "noise.png"]):
        image, maps, title = saved[name]
        c = int(probs[i].argmax())
        assert title == f"{pictures[i].name}: class {c} ({probs[i, c]:.2f})"
        assert list(maps) == ["own", "gradcam", "scorecam"]
        assert image.shape == (3, 16, 16)
        assert maps["own"].shape == (4, 4)  # the model's map at its feature resolution
        assert maps["gradcam"].shape == (16, 16)
        assert float(maps["scorecam"].min()) >= 0
        assert float(maps["scorecam"].max()) <= 1
    expected = lficam.cams.create("gradcam", net)(x, probs.argmax(dim=1))
    torch.testing.assert_close(saved["noise.png"][1]["gradcam"], expected[1])


def test_reads_red_as_red(pictures: list[Path]) -> None:
    images = explain.read_images([str(pictures[0])], 30)
    assert images.shape == (1, 3, 30, 30)
    assert images[0, 0, 15, 15] == 1.0  # the centre of the red square, after a 30×20 → 30×30 resize
    assert images[0, 1:, 15, 15].abs().max() == 0
    assert images[0, :, 0, 0].abs().max() == 0


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_image", "does not exist"),
        ("broken_image", "cannot be read as a picture"),
        ("unknown_method", "Unknown method 'smoothgrad': choose one of"),
        ("foreign_checkpoint", "it was not written by lficam"),
        ("text_checkpoint", "not a checkpoint that loads safely"),
        ("missing_checkpoint", "does not exist"),
        ("no_checkpoint", "No checkpoint given"),
        ("bad_override", "write them as key=value"),
    ],
)
@pytest.mark.slow
def test_user_mistakes_get_one_sentence_and_exit_code_2(
    case: str,
    expected: str,
    checkpoint: Path,
    pictures: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    images, ckpt, methods = list(pictures), checkpoint, "[own,gradcam]"
    if case == "missing_image":
        images.append(tmp_path / "nowhere.png")
    elif case == "broken_image":
        images.append(tmp_path / "broken.png")
        images[-1].write_bytes(b"not a png at all")
    elif case == "unknown_method":
        methods = "[own,smoothgrad]"
    elif case == "foreign_checkpoint":
        ckpt = tmp_path / "other.ckpt"
        torch.save({"state_dict": {"weight": torch.zeros(2)}, "epoch": 3}, ckpt)
    elif case == "text_checkpoint":
        ckpt = tmp_path / "notes.ckpt"
        ckpt.write_text("hello")
    elif case == "missing_checkpoint":
        ckpt = tmp_path / "gone.ckpt"
    args = _args(ckpt, images, tmp_path / "out", methods)
    if case == "no_checkpoint":
        args = args[1:]
    elif case == "bad_override":
        args.append("colour=blue")
    assert cli.explain(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert "\n" not in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_as_a_module_from_the_shell(checkpoint: Path, pictures: list[Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    result = warm_python.run(
        [
            sys.executable,
            "-m",
            "lficam.explain",
            *_args(checkpoint, [pictures[0], missing], tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"Error: Image {str(missing)!r} does not exist: check the path (relative paths start at {ROOT})."
    )
