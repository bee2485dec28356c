"""Streamed data sets: ``lficam-optimize`` writes litdata chunks, ``data=streaming`` trains from them.

- The streamed items are the source's items: the same pixels, labels, masks and augmentation draws, by id.
- A run resumed from a checkpoint taken inside an epoch ends with the unbroken run's weights, in process with
  0 workers and a ``configure_optimizers`` that reads ``trainer.estimated_stepping_batches`` (Lightning issue
  20550 drops litdata's loader state then; the data module keeps its own copy), and as a real ``train.py``
  SIGKILLed and resumed with 2 workers.
- Under DDP every rank reads its own images, the same number of batches each.
- Bad input is one sentence: no data set, no index, a pickled format, a class count or image size that differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lficam.core.errors import UserError
from lficam.data import StreamingDataModule
from lficam.data.stream_write import write_streamed
from lficam.training.module import LitClassifier
from tests import warm_python
from tests.test_resume_mid_epoch import (
    BATCH,
    STEPS_PER_EPOCH,
    TRAIN,
    EstimatingClassifier,
    differing,
    fit,
    shapes,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shapes of tests/test_resume_mid_epoch.py as a streamed data set (several chunks a split)."""
    folder = tmp_path_factory.mktemp("streamed") / "shapes"
    write_streamed(shapes(), str(folder), chunk_bytes="8kB")
    return folder


def streaming(folder: Path, **options: object) -> StreamingDataModule:
    return StreamingDataModule(input_dir=str(folder), batch_size=BATCH, shuffle_seed=3, **options)


def test_streamed_items_are_the_source_items(streamed: Path) -> None:
    metadata = json.loads((streamed / "lficam.json").read_text())
    assert metadata["sizes"] == {"train": TRAIN, "val": 16, "test": 16}
    assert metadata["masks"] == {"train": True, "val": True, "test": True}
    assert len(list((streamed / "train").glob("chunk-*.bin"))) > 1
    source, data = shapes(), streaming(streamed)
    source.setup("fit")
    data.setup("fit")
    assert data.describe_input() == source.describe_input()
    epochs_seen = set()
    for epoch, loader in enumerate([data.train_dataloader()] * 2):  # litdata counts the epochs itself
        source.train_set.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == STEPS_PER_EPOCH
        ids = torch.cat([b["index"] for b in batches])
        assert sorted(ids.tolist()) == list(range(TRAIN))  # every image once, shuffled
        for batch in batches:
            for row, index in enumerate(batch["index"].tolist()):
                item = source.train_set[index]
                assert torch.equal(batch["image"][row], item["image"])
                assert torch.equal(batch["mask"][row], item["mask"])
                assert int(batch["label"][row]) == int(item["label"])
        epochs_seen.add(tuple(ids.tolist()))
    assert len(epochs_seen) == 2  # a new order each epoch
    # the comparison has teeth: the source flips about half of its images, differently in the two epochs
    flips = [source.train_set.crop_and_flip(i)[2] for i in range(TRAIN)]
    source.train_set.set_epoch(0)
    assert flips != [source.train_set.crop_and_flip(i)[2] for i in range(TRAIN)]
    assert 16 < sum(flips) < 48


def test_every_rank_reads_its_own_images_in_equal_batches(streamed: Path) -> None:
    from litdata.utilities.env import _DistributedEnv

    seen = []
    for rank in range(2):
        data = streaming(streamed)
        data.setup("fit")
        data.train_set.distributed_env = _DistributedEnv(world_size=2, global_rank=rank, num_nodes=1)
        seen.append([b["index"] for b in data.train_dataloader()])
    assert len(seen[0]) == len(seen[1]) == TRAIN // (2 * BATCH)
    assert all(len(batch) == BATCH for batches in seen for batch in batches)
    first, second = (set(torch.cat(batches).tolist()) for batches in seen)
    assert not first & second
    assert first | second == set(range(TRAIN))
    # litdata hands ranks whole training batches: 64 images in batches of 64 leave one of 2 ranks none
    data = StreamingDataModule(input_dir=str(streamed), batch_size=TRAIN, shuffle_seed=3)
    data.setup("fit")
    data.train_set.distributed_env = _DistributedEnv(world_size=2, global_rank=0, num_nodes=1)
    with pytest.raises(
        UserError, match=rf"gives a rank no batch of {TRAIN} on 2 ranks .*; lower data.batch_size"
    ):
        data.train_dataloader()


def test_evaluation_splits_are_shared_out_map_style_each_image_once(streamed: Path) -> None:
    from torch.utils.data import DataLoader, DistributedSampler

    source = shapes()
    source.setup("validate")
    data = streaming(streamed, eval_batch_size=256)  # larger than the split: one batch per rank all the same
    data.setup("validate")
    loader = data.val_dataloader()
    assert len(loader.dataset) == 16
    seen = []
    for rank in range(2):  # what Lightning's DistributedSampler gives each rank under DDP
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        batches = list(DataLoader(loader.dataset, batch_size=256, sampler=sampler))
        assert [len(b["index"]) for b in batches] == [8]
        seen.append(batches[0])
    ids = torch.cat([b["index"] for b in seen]).tolist()
    assert sorted(ids) == list(range(16))  # every image once, none twice
    for batch in seen:
        for row, index in enumerate(batch["index"].tolist()):
            item = source.val_set[index]
            assert torch.equal(batch["image"][row], item["image"])
            assert torch.equal(batch["mask"][row], item["mask"])


@pytest.mark.slow
def test_streamed_resume_inside_an_epoch_survives_estimated_stepping_batches(
    streamed: Path, tmp_path: Path
) -> None:
    def data() -> StreamingDataModule:
        return streaming(streamed)

    unbroken = fit(tmp_path / "A", LitClassifier, data=data)
    fit(tmp_path / "B", EstimatingClassifier, stop_at=7, data=data)  # last.ckpt at step 6: epoch 1, batch 2
    checkpoint = torch.load(tmp_path / "B" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6
    assert checkpoint["StreamingDataModule"]["lficam_train_loader"]["num_samples_yielded"] == 2 * BATCH
    resumed = fit(tmp_path / "C", EstimatingClassifier, ckpt=tmp_path / "B" / "last.ckpt", data=data)
    assert EstimatingClassifier.estimated[-1] == 2 * STEPS_PER_EPOCH  # the trap was set
    assert resumed["global_step"] == unbroken["global_step"] == 2 * STEPS_PER_EPOCH
    assert differing(unbroken, resumed) == []
    # a state saved at an epoch's last batch is a finished epoch: the resumed run starts the next one
    fit(tmp_path / "D", LitClassifier, stop_at=5, data=data, every=STEPS_PER_EPOCH)
    assert torch.load(tmp_path / "D" / "last.ckpt", weights_only=True)["global_step"] == STEPS_PER_EPOCH
    resumed = fit(tmp_path / "E", LitClassifier, ckpt=tmp_path / "D" / "last.ckpt", data=data)
    assert differing(unbroken, resumed) == []


def _train(*arguments: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return warm_python.popen(
        [sys.executable, str(ROOT / "train.py"), *arguments],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
def test_streamed_run_killed_inside_an_epoch_resumes_exactly_with_workers(
    streamed: Path, tmp_path: Path
) -> None:
    from tests.kill_at_step import kill_at
    from tests.test_resume_mid_epoch import EPOCHS, KILL_AT, RUN, _finish, _killed_inside_second_epoch, _load

    run = [a for a in RUN if not a.startswith("data.")] + [
        "data=streaming",
        f"data.input_dir={streamed}",
        f"data.batch_size={BATCH}",
        "data.eval_batch_size=32",
        "data.num_workers=2",
    ]
    unbroken = _train(*run, f"hydra.run.dir={tmp_path / 'A'}")
    broken = _train(*run, f"hydra.run.dir={tmp_path / 'B'}", *kill_at(KILL_AT))
    last = tmp_path / "B" / "checkpoints" / "last.ckpt"
    assert _killed_inside_second_epoch(broken, last) % STEPS_PER_EPOCH
    _finish(unbroken)
    _finish(_train(*run, f"hydra.run.dir={tmp_path / 'C'}", f"ckpt_path={last}"))
    final_a = _load(tmp_path / "A" / "checkpoints" / "last.ckpt")
    final_c = _load(tmp_path / "C" / "checkpoints" / "last.ckpt")
    assert final_a["global_step"] == final_c["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert differing(final_a, final_c) == []


def test_data_mean_and_std_normalise_what_the_split_hands_out(streamed: Path) -> None:
    """data.mean / data.std replace the source's normalisation in the items, as describe_input says."""
    source, chosen = streaming(streamed), streaming(streamed, mean=(0.5, 0.25, 0.0), std=(0.2, 0.4, 1.0))
    source.setup("validate")
    chosen.setup("validate")
    assert chosen.describe_input()["mean"] == [0.5, 0.25, 0.0]
    given, mine = source.val_set[3]["image"], chosen.val_set[3]["image"]
    pixels = given * torch.tensor(source.std).view(3, 1, 1) + torch.tensor(source.mean).view(3, 1, 1)
    expected = (pixels - torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1)) / torch.tensor([0.2, 0.4, 1.0]).view(
        3, 1, 1
    )
    assert torch.allclose(mine, expected, atol=1e-5)


# --- bad input: one sentence each ---


def test_a_missing_or_foreign_input_dir_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"does not exist; write a streamed data set there with lficam-optimize"
    ):
        streaming(tmp_path / "nowhere")
    with pytest.raises(
        UserError, match=r"holds no lficam streamed data set \(lficam.json and train/index.json\)"
    ):
        streaming(tmp_path)


def test_a_pickled_item_format_is_refused_before_litdata_reads_it(streamed: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(streamed, copy)
    index = json.loads((copy / "train" / "index.json").read_text())
    index["config"]["data_format"][0] = "pickle"
    (copy / "train" / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"stores items as \['pickle'\], not as an lficam streamed data set"):
        streaming(copy).setup("fit")
    (copy / "val" / "index.json").write_text("{not json")
    with pytest.raises(UserError, match=r"val/index.json is not a litdata index"):
        streaming(copy).setup("validate")


def test_class_count_or_image_size_that_differs_is_one_sentence(streamed: Path) -> None:
    with pytest.raises(UserError, match=r"data.num_classes=3 but the streamed data set at .* has 10 classes"):
        streaming(streamed, num_classes=3)
    with pytest.raises(UserError, match=r"data.image_size=32 but .* holds 16 px images"):
        streaming(streamed, image_size=32)
    data = streaming(streamed)
    with pytest.raises(
        UserError, match=r"trained with num_classes=5, but the streamed data set at .* has num_classes=10"
    ):
        data.load_state_dict({"lficam_input": {"num_classes": 5, "image_size": 16}})


def test_optimize_command_writes_and_refuses_in_one_sentence(tmp_path: Path) -> None:
    from lficam.cli.optimize import optimize

    tiny = [
        "data.image_size=16",
        "data.train_size=32",
        "data.val_size=16",
        "data.test_size=16",
        "data.cache_dir=null",
    ]
    assert optimize(["data=shapes", *tiny, f"output={tmp_path / 'out'}"]) == 0
    assert json.loads((tmp_path / "out" / "lficam.json").read_text())["sizes"]["train"] == 32
    assert optimize(["data=shapes", *tiny, f"output={tmp_path / 'out'}"]) == 2  # not over an existing one
    # a folder that is no image folder (no train/ in it)
    assert optimize(["data=image_folder", f"data.root={tmp_path}", f"output={tmp_path / 'x'}"]) == 2


def _metrics_row(metrics_csv: Path, key: str) -> dict[str, float]:
    import csv

    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(key)]
    assert len(rows) == 1, rows  # logged once (by rank 0)
    prefix = key.split("/")[0] + "/"
    return {k: float(v) for k, v in rows[0].items() if v and k.startswith(prefix)}


@pytest.mark.slow
def test_streamed_ddp_run_validates_and_tests_every_image_once(streamed: Path, tmp_path: Path) -> None:
    """A real 2-process ``trainer=ddp_cpu`` run: its validation and test metrics (8 images a rank, in batches
    of 4, reduced over both) equal one process's over all 16 images with the same weights."""
    from tests.conftest import module_from_checkpoint, quiet_trainer, run_quietly
    from tests.test_resume_mid_epoch import RUN

    run = [a for a in RUN if not a.startswith(("data.", "test=", "callbacks.last_checkpoint"))]
    command = [
        str(ROOT / "train.py"),
        *run,
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "test=true",
        "data=streaming",
        f"data.input_dir={streamed}",
        f"data.batch_size={BATCH}",
        "data.eval_batch_size=4",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = run_quietly([sys.executable, *command])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    (metrics_csv,) = (tmp_path / "run").rglob("metrics.csv")
    ddp = {**_metrics_row(metrics_csv, "val/acc"), **_metrics_row(metrics_csv, "test/acc")}

    checkpoint = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert checkpoint["global_step"] == TRAIN // (2 * BATCH)  # each rank trained on its own half
    module = module_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    trainer = quiet_trainer(devices=1)
    single = {
        **trainer.validate(module, datamodule=streaming(streamed, eval_batch_size=16), verbose=False)[0],
        **trainer.test(module, datamodule=streaming(streamed, eval_batch_size=16), verbose=False)[0],
    }
    for key in (
        "val/acc",
        "val/loss",
        "val/attn/pointing_game",
        "test/acc",
        "test/loss",
        "test/attn/pointing_game",
    ):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    assert single["test/loss"] > 0  # a real forward pass over the images


def test_an_image_folder_streams_with_its_masks_boxes_and_transforms(tmp_path: Path) -> None:
    """``lficam-optimize data=image_folder`` stores each image and its mask (from a mask file or VOC boxes) at
    the file's size; ``data=streaming`` gives them the folder's RandomResizedCrop and flip (the same draws for
    the same seed, epoch and id) or its resize and centre crop, and its normalisation: the source's tensors."""
    from lficam.data import ImageFolderDataModule
    from tests.test_data_image_folder import write_folder

    write_folder(tmp_path / "folder", splits=("train", "val", "test"))
    done = warm_python.run(
        [
            sys.executable,
            "-m",
            "lficam.cli.optimize",
            "data=image_folder",
            f"data.root={tmp_path / 'folder'}",
            "data.image_size=16",
            f"output={tmp_path / 'streamed'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Wrote 6 train, 6 val, 6 test images (16 px, 2 classes)" in done.stdout
    metadata = json.loads((tmp_path / "streamed" / "lficam.json").read_text())
    assert metadata["masks"] == {"train": True, "val": True, "test": True}
    assert metadata["resized_crop"] == {"scale": [0.08, 1.0], "resize_size": 18}

    source = ImageFolderDataModule(tmp_path / "folder", image_size=16, batch_size=3, shuffle_seed=5)
    data = StreamingDataModule(input_dir=str(tmp_path / "streamed"), batch_size=3, shuffle_seed=5)
    source.setup(None)
    data.setup(None)
    assert (data.num_classes, data.image_size, data.mean) == (2, 16, source.mean)
    by_epoch = []
    for epoch, loader in enumerate([data.train_dataloader()] * 2):
        source.train_set.set_epoch(epoch)
        batches = list(loader)
        ids = torch.cat([b["index"] for b in batches]).tolist()
        assert sorted(ids) == list(range(6))
        images = {}
        for batch in batches:
            for row, index in enumerate(batch["index"].tolist()):
                item = source.train_set[index]
                assert batch["image"][row].shape == (3, 16, 16)
                assert torch.equal(batch["image"][row], item["image"])
                assert torch.equal(batch["mask"][row], item["mask"])
                assert int(batch["label"][row]) == int(item["label"])
                images[index] = batch["image"][row]
        by_epoch.append(images)
    # the comparison has teeth: the crops are random, and differ from one epoch to the next
    assert sum(not torch.equal(by_epoch[0][i], by_epoch[1][i]) for i in range(6)) >= 4
    for split, loader in (("val", data.val_dataloader()), ("test", data.test_dataloader())):
        expected = getattr(source, f"{split}_set")
        seen = 0
        for batch in loader:
            for row, index in enumerate(batch["index"].tolist()):
                item = expected[index]
                assert torch.equal(batch["image"][row], item["image"]), split
                assert torch.equal(batch["mask"][row], item["mask"]), split
                seen += 1
        assert seen == 6
        # the masks came through: the cats' mask files and the dogs' boxes, 16×8 of 64×32 before resizing
        assert 0 < int(item["mask"].sum()) < 16 * 16 // 2


@pytest.mark.slow
def test_train_py_trains_from_a_streamed_image_folder_with_localisation_metrics(tmp_path: Path) -> None:
    import math

    from lficam.data import ImageFolderDataModule
    from tests.test_data_fashion_train import LOCALISATION, train_cli
    from tests.test_data_image_folder import write_folder

    write_folder(tmp_path / "folder", splits=("train", "val", "test"))
    write_streamed(ImageFolderDataModule(tmp_path / "folder", image_size=16), str(tmp_path / "streamed"))
    summary = train_cli(
        tmp_path, ["data=streaming", f"data.input_dir={tmp_path / 'streamed'}", "data.batch_size=3"]
    )
    for key in ("test/acc", *LOCALISATION):
        assert math.isfinite(summary["metrics"][key]), key
    checkpoint = torch.load(
        Path(summary["run_dir"], summary["best_checkpoint"]), weights_only=True, map_location="cpu"
    )
    assert checkpoint["hyper_parameters"]["model_config"]["num_classes"] == 2
    assert checkpoint["global_step"] == 2  # 6 images in batches of 3, one epoch
