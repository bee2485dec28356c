"""Issue 13's three commands on a checkpoint written by train.py: explain on pairs, eval with FAM (the FC
row and class prototypes), and eval as retrieval, with their numbers recomputed here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from safetensors import safe_open

import lficam.evaluation.pairs
from lficam import cams, cli
from lficam.cams.fam import pooled_features
from lficam.evaluation.command import run_eval as run_eval_command
from lficam.evaluation.pairs import save_embedding
from lficam.evaluation.prototypes import KIND, data_split, training_data_config
from lficam.explain import command as explain
from lficam.training.task import train
from tests.conftest import CONF, TINY, compose_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base folder, last.ckpt) of `python train.py trainer.max_epochs=1 ++trainer.limit_train_batches=4
    ++trainer.limit_val_batches=2 data.train_size=256 data.val_size=64 data.test_size=64`."""
    base = tmp_path_factory.mktemp("fam_run")
    overrides = [*TINY, "++trainer.limit_train_batches=4", "++trainer.limit_val_batches=2"]
    cfg = compose_train([*overrides, "callbacks.attention_overlays=null"], base / "run")
    cfg.paths.data_dir = str(base / "data")
    train(cfg)
    return base, base / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fam_pictures")
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("a.png", "b.png", "ref.png"):
        paths[name] = folder / name
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[name])
    return paths


def normalised(net: torch.nn.Module, paths: list[Path]) -> torch.Tensor:
    stored = net.lficam_metadata["input"]
    mean, std = torch.tensor(stored["mean"]).view(1, 3, 1, 1), torch.tensor(stored["std"]).view(1, 3, 1, 1)
    return (explain.read_images([str(p) for p in paths], stored["image_size"]) - mean) / std


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple]:
    saved: dict[str, tuple] = {}
    real = lficam.evaluation.pairs.save_panel_rows

    def record(path, rows, title=""):
        saved[Path(path).name] = (rows, title)
        return real(path, rows, title)

    monkeypatch.setattr(lficam.evaluation.pairs, "save_panel_rows", record)
    return saved


def test_explain_writes_one_picture_per_pair_with_fam_on_both_sides(
    trained: tuple[Path, Path], pictures: dict[str, Path], tmp_path: Path, spy: dict[str, tuple]
) -> None:
    _, ckpt = trained
    a, b, ref = pictures["a.png"], pictures["b.png"], pictures["ref.png"]
    out = tmp_path / "pairs"
    args = [
        f"ckpt_path={ckpt}",
        f"images=[{a},{b}]",
        "methods=[fam]",
        f"reference={ref}",
        f"output_dir={out}",
    ]
    assert cli.explain(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_fam_ref.png", "b_fam_ref.png"]

    net, _ = explain.load_checkpoint(ckpt)
    x, r = normalised(net, [a, b]), normalised(net, [ref])
    cosine = F.cosine_similarity(pooled_features(net, x), pooled_features(net, r))
    fam = cams.create("fam", net)
    for i, name in enumerate(["a_fam_ref.png", "b_fam_ref.png"]):
        rows, title = spy[name]
        assert title == f"{'ab'[i]}.png ↔ ref.png: cosine similarity {float(cosine[i]):.3f}"
        assert [panel[2] for panel in rows[0]] == [f"{'ab'[i]}.png", "FAM", "ref.png", "FAM, roles swapped"]
        expected = fam.pair(x[i : i + 1], r)
        torch.testing.assert_close(rows[0][1][1], expected.maps[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(rows[0][3][1], expected.reference_maps[0], rtol=0, atol=1e-5)
        assert rows[0][0][1] is None and rows[0][2][1] is None  # the plain image and reference

    # The roles swapped on the command line: the maps trade places.
    swapped = [f"ckpt_path={ckpt}", f"images=[{ref}]", "methods=[fam]", f"reference={a}", f"output_dir={out}"]
    assert cli.explain(swapped) == 0
    rows, _ = spy["ref_fam_a.png"]
    torch.testing.assert_close(rows[0][1][1], spy["a_fam_ref.png"][0][0][3][1], rtol=0, atol=1e-5)
    torch.testing.assert_close(rows[0][3][1], spy["a_fam_ref.png"][0][0][1][1], rtol=0, atol=1e-5)

    # One reference per image, the Euclidean similarity, and the own map beside it in its usual picture.
    each = [
        f"ckpt_path={ckpt}",
        f"images=[{a},{b}]",
        "methods=[own,fam]",
        f"reference=[{b},{a}]",
        "fam.similarity=euclidean",
        f"output_dir={tmp_path / 'each'}",
    ]
    assert cli.explain(each) == 0
    names = sorted(p.name for p in (tmp_path / "each").iterdir())
    assert names == ["a.png", "a_fam_b.png", "b.png", "b_fam_a.png"]
    distance = (pooled_features(net, x[:1]) - pooled_features(net, x[1:])).square().sum()
    assert spy["a_fam_b.png"][1] == f"a.png ↔ b.png: squared distance {float(distance):.3f}"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "Reference '{missing}' does not exist"),
        ("count", "reference has 3 entries for 2 images"),
        ("without_fam", "reference= is FAM's second image: add fam to methods"),
        ("other_layer", "was taken at layer 'backbone.stages.1' but FAM explains 'backbone.stages.2'"),
        ("wrong_size", "has 16 features but FAM's layer 'backbone.stages.2' has 64 channels"),
        ("similarity", "Unknown FAM similarity 'manhattan'"),
        ("fam_reference", "Unknown fam.reference 'centroid'"),
    ],
)
def test_bad_references_get_one_sentence(
    case: str,
    expected: str,
    trained: tuple[Path, Path],
    pictures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    _, ckpt = trained
    a, b, ref = pictures["a.png"], pictures["b.png"], pictures["ref.png"]
    missing = tmp_path / "nowhere.jpg"
    reference, methods, extra = str(ref), "[fam]", []
    if case == "missing":
        reference = str(missing)
    elif case == "count":
        reference = f"[{ref},{ref},{ref}]"
    elif case == "without_fam":
        methods = "[gradcam]"
    elif case == "other_layer":
        reference = str(save_embedding(tmp_path / "e.safetensors", torch.ones(64), layer="backbone.stages.1"))
    elif case == "wrong_size":
        reference = str(save_embedding(tmp_path / "e.safetensors", torch.ones(16), layer="backbone.stages.2"))
    elif case == "similarity":
        extra = ["fam.similarity=manhattan"]
    elif case == "fam_reference":
        reference, extra = "null", ["fam.reference=centroid"]
    args = [f"ckpt_path={ckpt}", f"images=[{a},{b}]", f"methods={methods}", f"reference={reference}", *extra]
    assert cli.explain([*args, f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected.format(missing=missing) in err
    assert "\n" not in err and "Traceback" not in err


def test_an_embedding_file_as_the_reference(
    trained: tuple[Path, Path], pictures: dict[str, Path], tmp_path: Path, spy: dict[str, tuple]
) -> None:
    _, ckpt = trained
    net, _ = explain.load_checkpoint(ckpt)
    r = normalised(net, [pictures["ref.png"]])
    embedding = save_embedding(
        tmp_path / "ref.safetensors", pooled_features(net, r), layer="backbone.stages.2"
    )
    args = [f"ckpt_path={ckpt}", f"images=[{pictures['a.png']}]", "methods=[fam]", f"reference={embedding}"]
    assert cli.explain([*args, f"output_dir={tmp_path / 'out'}"]) == 0
    rows, title = spy["a_fam_ref.png"]
    assert len(rows[0]) == 2  # an embedding has no picture of its own
    x = normalised(net, [pictures["a.png"]])
    torch.testing.assert_close(rows[0][1][1], cams.create("fam", net)(x, reference=r)[0], rtol=0, atol=1e-5)
    assert title.startswith("a.png ↔ ref.safetensors: cosine similarity ")


def test_explain_with_class_prototypes(
    trained: tuple[Path, Path], pictures: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ckpt = trained
    saved = {}
    monkeypatch.setattr(explain, "save_side_by_side", lambda path, image, maps, title="": saved.update(maps))
    args = [f"ckpt_path={ckpt}", f"images=[{pictures['a.png']}]", "methods=[fam]", "fam.reference=prototypes"]
    assert cli.explain([*args, "fam.prototype_images=3", f"output_dir={tmp_path}"]) == 0
    cache = sorted(ckpt.parent.glob("last.ckpt.fam-prototypes-*.safetensors"))
    assert len(cache) == 1
    with safe_open(str(cache[0]), framework="pt") as f:
        made_by = json.loads(f.metadata()[KIND])
        table = f.get_tensor("prototypes")
    assert made_by["per_class"] == 3 and made_by["layer"] == "backbone.stages.2"

    # The prototypes recomputed here: the mean embedding of the first 3 training images of each class.
    net, _ = explain.load_checkpoint(ckpt)
    split, _ = data_split(training_data_config(ckpt), "train")
    labels = torch.stack([split[i]["label"] for i in range(len(split))])
    expected = torch.stack(
        [
            pooled_features(
                net, torch.stack([split[int(i)]["image"] for i in (labels == c).nonzero()[:3, 0]])
            ).mean(0)
            for c in range(10)
        ]
    )
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-5)
    x = normalised(net, [pictures["a.png"]])
    torch.testing.assert_close(
        saved["fam"], cams.create("fam", net, prototypes=expected)(x)[0], atol=1e-5, rtol=0
    )


def run_eval(overrides: list[str], base: Path, out: Path, capsys: pytest.CaptureFixture) -> str:
    """``python eval.py <overrides>`` in this process (eval.py's main only hands the config to run_eval):
    the real eval config composed by Hydra, the run folder and data folder set as Hydra would; its stdout."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        paths = [f"paths.root_dir={base}", f"paths.output_dir={out}", f"paths.data_dir={base / 'data'}"]
        cfg = compose("eval", overrides=[*overrides, *paths])
    capsys.readouterr()
    run_eval_command(cfg)
    return capsys.readouterr().out


def test_eval_scores_fam_like_every_cam_and_names_its_reference(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    base, ckpt = trained
    out = base / "eval_fam"
    args = [
        f"ckpt_path={ckpt}",
        "eval.cams=[gradcam,fam]",
        "fam.reference=prototypes",
        "fam.prototype_images=3",
    ]
    stdout = run_eval([*args, "eval.num_images=4", "eval.pixels_per_step=128"], base, out, capsys)
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["maps"]) == {"own", "gradcam", "fam"}
    assert set(report["maps"]["fam"]) == set(report["maps"]["gradcam"])
    assert 0 <= report["maps"]["fam"]["deletion_auc"] <= 1
    assert report["fam_reference"].startswith(
        "class prototypes: the mean backbone.stages.2 embedding of 3 training images per class"
    )
    assert "FAM's reference: class prototypes" in (out / "metrics.md").read_text()
    assert "FAM's reference: class prototypes" in stdout


def test_eval_as_retrieval(trained: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    base, ckpt = trained
    out = base / "eval_retrieval"
    # eval's defaults (the quick protocol: 32 images, 16 deletion/insertion steps), as a user types it
    args = [f"ckpt_path={ckpt}", "eval.task=retrieval", "eval.retrieval_pictures=2"]
    stdout = run_eval(args, base, out, capsys)
    report = json.loads((out / "retrieval.json").read_text())
    assert report["protocol"] == {
        "protocol": "quick",
        "num_images": 32,
        "curve_steps": 16,
        "pixels_per_step": 64,
    }
    assert report["faithfulness_images"] == 32

    # recall@k recomputed here: every test image against every training image, by cosine similarity.
    net, _ = explain.load_checkpoint(ckpt)
    data = training_data_config(ckpt)
    embedded = {}
    for split in ("test", "train"):
        items, _ = data_split(data, split, str(base / "data"))
        images = torch.stack([items[i]["image"] for i in range(len(items))])
        embedded[split] = (
            pooled_features(net, images),
            torch.stack([items[i]["label"] for i in range(len(items))]),
        )
    (q, ql), (g, gl) = embedded["test"], embedded["train"]
    order = F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    ranked = gl[order.argsort(dim=1, descending=True)]
    for k in (1, 5):
        assert report[f"recall@{k}"] == pytest.approx(
            float((ranked[:, :k] == ql[:, None]).any(1).float().mean())
        )
    assert report["gallery"] == "the training split (256 images, no augmentation)"
    assert set(report["similarity_faithfulness"]) == {"fam", "simgradcam"}
    for scores in report["similarity_faithfulness"].values():
        assert -1 <= scores["deletion_auc"] <= 1 and -1 <= scores["insertion_auc"] <= 1
    assert (out / "fam_query_match.png").stat().st_size > 5000
    assert (out / "similarity_deletion_insertion.png").stat().st_size > 5000
    assert "recall@1" in stdout and "Results written to" in stdout
