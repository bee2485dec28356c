"""lficam-app, the explorer: what it computes (equal to eval.py's definitions), and the page, run headless."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from PIL import Image

from lficam.app import explorer as app
from lficam.app.launch import PAGE, TARGET_VARIABLE
from lficam.checkpoints.records import best_checkpoint
from lficam.core.errors import UserError
from lficam.evaluation.cross_run import similarity_matrices
from lficam.evaluation.images import build_test_data, first_test_images
from lficam.evaluation.maps import OWN, map_fn
from lficam.evaluation.scores import score_maps
from lficam.training.task import train
from tests import warm_python
from tests.conftest import ROOT, TINY, compose_train, subprocess_env

streamlit_testing = pytest.importorskip(
    "streamlit.testing.v1", reason="the app extra: pip install 'lficam[app]'"
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep folder of two tiny LFI-CAM runs on the shapes (they have object masks)."""
    base = tmp_path_factory.mktemp("app_sweep")
    for seed in (1, 2):
        cfg = compose_train(
            [*TINY, "++trainer.limit_train_batches=3", "callbacks.attention_overlays=null", f"seed={seed}"],
            base / f"seed{seed}",
        )
        cfg.paths.data_dir = str(base / "data")
        train(cfg)
    return base


def png_bytes(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --- what is opened -----------------------------------------------------------------------------------------
def test_a_path_that_holds_no_checkpoint_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"does not exist: give a checkpoint, a run folder or a sweep folder"):
        app.resolve_target(tmp_path / "missing")
    with pytest.raises(UserError, match=r"is not a checkpoint: open a \.ckpt or \.safetensors file"):
        app.resolve_target(tmp_path / "notes.txt")
    with pytest.raises(UserError, match=r"holds no run with checkpoints/"):
        app.resolve_target(tmp_path)


@pytest.mark.slow
def test_a_checkpoint_a_run_folder_and_a_sweep_folder_are_told_apart(sweep):
    run = sweep / "seed1"
    assert app.resolve_target(run).kind == "run"
    assert app.resolve_target(run).checkpoints == [best_checkpoint(run)]  # the one eval.py scores
    assert best_checkpoint(run) == run / "checkpoints" / "epoch_000.ckpt"
    ckpt = app.resolve_target(run / "checkpoints" / "last.ckpt")
    assert (ckpt.kind, ckpt.checkpoints) == ("checkpoint", [run / "checkpoints" / "last.ckpt"])
    both = app.resolve_target(sweep)
    assert both.kind == "sweep"
    assert both.names == ["seed1", "seed2"]


# --- the numbers: eval.py's definitions on one image -----------------------------------------------------------
@pytest.mark.slow
def test_maps_and_scores_equal_the_evaluation_package_on_the_same_image(sweep):
    checkpoint = sweep / "seed1" / "checkpoints" / "last.ckpt"
    explorer = app.Explorer(checkpoint, data_dir=str(sweep / "data"))
    sample = explorer.test_image(3)

    datamodule = build_test_data(explorer.data_config, str(sweep / "data"))
    probe = first_test_images(datamodule, 4, torch.device("cpu"))
    torch.testing.assert_close(sample.image, probe.images[3])
    torch.testing.assert_close(sample.mask, probe.masks[3].float())
    assert sample.label == int(probe.labels[3])

    for method in (OWN, "gradcam"):
        fn = map_fn(explorer.model, method)
        expected = fn(probe.images[3:4])[0]
        torch.testing.assert_close(explorer.map(sample, method), expected)
        one = app.Probe(
            probe.images[3:4], probe.labels[3:4], probe.masks[3:4], probe.ids[3:4], probe.display[3:4]
        )
        reference = score_maps(
            explorer.model, one, expected[None], fn, app.ONE_IMAGE, explorer.num_classes, method
        )
        shown = explorer.scores(sample, method)
        assert set(shown.values) == {
            "pointing_game",
            "energy_pointing_game",
            "mask_iou",
            "deletion_auc",
            "insertion_auc",
            "average_drop",
            "increase_in_confidence",
        }
        for key, value in reference.values.items():
            assert shown.values[key] == pytest.approx(value, nan_ok=True), key
        assert shown.values["pointing_game"] in (0.0, 1.0)  # one image: a hit or a miss
        assert shown.curves["deletion"].shape == (1, 17)  # 16 steps and the intact image


@pytest.mark.slow
def test_maps_are_computed_once_per_image_and_method(sweep, monkeypatch):
    explorer = app.Explorer(sweep / "seed1" / "checkpoints" / "last.ckpt", data_dir=str(sweep / "data"))
    calls = []
    real = app.map_fn

    def counting(model, method, options=None):
        calls.append(method)
        return real(model, method, options)

    monkeypatch.setattr(app, "map_fn", counting)
    sample = explorer.test_image(0)
    first = explorer.map(sample, "gradcam")
    again = explorer.map(explorer.test_image(0), "gradcam")
    assert calls == ["gradcam"]
    assert again is first


@pytest.mark.slow
def test_across_runs_is_the_cross_run_statistic_of_the_evaluation_package(sweep):
    target = app.resolve_target(sweep)
    explorers = {str(c): app.Explorer(c, data_dir=str(sweep / "data")) for c in target.checkpoints}
    compared = app.Sweep(target, explorers.__getitem__).across_runs(
        explorers[str(target.checkpoints[0])].test_image(5)
    )
    iou, rho = similarity_matrices([m[None] for m in compared.maps])
    torch.testing.assert_close(compared.iou, iou)
    torch.testing.assert_close(compared.spearman, rho)
    assert compared.iou.shape == (2, 2)
    assert compared.iou[0, 0] == pytest.approx(1.0)  # a map agrees with itself
    assert not torch.allclose(compared.maps[0], compared.maps[1])  # two seeds: two maps


@pytest.mark.slow
def test_an_upload_is_resized_and_normalised_and_a_bad_one_is_one_sentence(sweep):
    explorer = app.Explorer(sweep / "seed1" / "checkpoints" / "last.ckpt")
    sample = explorer.upload("red.png", png_bytes(50, 70))
    assert sample.image.shape == (3, explorer.image_size, explorer.image_size)
    torch.testing.assert_close(
        sample.display[:, 10, 10], torch.tensor([200, 30, 30]) / 255, atol=1e-3, rtol=0
    )
    mean, std = torch.tensor(explorer.mean), torch.tensor(explorer.std)
    torch.testing.assert_close(sample.image[:, 10, 10], (sample.display[:, 10, 10] - mean) / std)
    assert sample.label is None and sample.mask is None
    with pytest.raises(
        UserError, match=r"Cannot read the upload 'notes\.png' \(.*\): upload a PNG or JPEG image"
    ):
        explorer.upload("notes.png", b"not an image at all")
    with pytest.raises(UserError, match=r"'big\.png' is 20\.0 MiB, more than the 20 MiB"):
        explorer.upload("big.png", b"\0" * (app.MAX_UPLOAD_BYTES + 1))


def test_the_download_is_a_png_of_the_row_on_screen():
    data = app.grid_png(torch.rand(3, 32, 32), {"own map": torch.rand(8, 8), "gradcam": torch.rand(32, 32)})
    picture = Image.open(io.BytesIO(data))
    assert picture.format == "PNG"
    assert picture.width > 2 * picture.height  # one row of three panels


# --- the page, headless (Streamlit's AppTest) ------------------------------------------------------------------
def captions(at) -> list[str]:
    """The caption of every picture on the page, in order (each st.image call shows one picture)."""
    assert all(len(i.value) == 1 and i.value[0] for i in at.image)  # one served picture each
    return [c for i in at.image for c in i.captions]


def page(monkeypatch, target) -> streamlit_testing.AppTest:
    monkeypatch.setenv(TARGET_VARIABLE, str(target))
    at = streamlit_testing.AppTest.from_file(str(PAGE), default_timeout=120)
    return at.run()


@pytest.mark.slow
def test_the_page_shows_the_image_and_each_chosen_method(sweep, monkeypatch):
    monkeypatch.setenv("LFICAM_APP_DATA_DIR", str(sweep / "data"))
    at = page(monkeypatch, sweep / "seed1")
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert captions(at) == ["image", "own map", "gradcam"]
    assert "predicted:" in at.markdown[0].value and "true class:" in at.markdown[0].value
    scores = at.dataframe[0].value
    assert list(scores.columns) == ["own map", "gradcam"]
    assert scores.loc["pointing game ↑", "own map"] in (0.0, 1.0)

    at.sidebar.multiselect[0].set_value([OWN, "gradcampp", "scorecam"]).run()
    assert captions(at) == ["image", "own map", "gradcampp", "scorecam"]
    at.sidebar.number_input[0].set_value(4).run()
    assert not at.exception
    assert at.download_button[0].label == "download this row as PNG"


@pytest.mark.slow
def test_the_page_shows_fam_against_the_prototype_and_against_another_image(sweep, monkeypatch):
    monkeypatch.setenv("LFICAM_APP_DATA_DIR", str(sweep / "data"))
    at = page(monkeypatch, sweep / "seed1")
    assert len(at.image) == 3  # FAM is computed only when asked for
    at.toggle(key="fam").set_value(True).run()
    assert not at.exception, at.exception
    assert captions(at)[-1].startswith("FAM against class prototypes: the mean")
    at.radio(key="fam_reference").set_value("another test image").run()
    assert captions(at)[-2:] == ["FAM on this image", "FAM on test image 2 (roles swapped)"]
    explorer = app.Explorer(sweep / "seed1" / "checkpoints" / "epoch_000.ckpt", data_dir=str(sweep / "data"))
    *_, similarity = explorer.fam_pair(explorer.test_image(0), explorer.test_image(1))
    assert at.metric[0].value == f"{similarity:.3f}"


@pytest.mark.slow
def test_the_page_of_a_sweep_shows_the_same_image_in_every_run(sweep, monkeypatch):
    monkeypatch.setenv("LFICAM_APP_DATA_DIR", str(sweep / "data"))
    at = page(monkeypatch, sweep)
    assert not at.exception, at.exception
    assert "the same image across the 2 runs" in [s.value for s in at.subheader]
    assert {"seed1", "seed2"} <= set(captions(at))
    iou = at.dataframe[1].value
    assert list(iou.index) == ["seed1", "seed2"]
    assert iou.loc["seed1", "seed1"] == pytest.approx(1.0)


def test_a_bad_path_is_a_sentence_in_the_page_not_a_traceback(monkeypatch, tmp_path):
    at = page(monkeypatch, tmp_path / "nowhere")
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"{str(tmp_path / 'nowhere')!r} does not exist: give a checkpoint, a run folder or a sweep folder."
    ]


@pytest.mark.slow
def test_lficam_app_refuses_a_bad_path_before_serving(tmp_path):
    result = warm_python.run(
        [sys.executable, "-m", "lficam.app.launch", str(tmp_path / "nowhere")],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: {str(tmp_path / 'nowhere')!r} does not exist: give a checkpoint, a run folder or a sweep folder."
    ]
