"""One seeding rule for every data module, and the epoch reaching data-loader workers.

The rule (lficam/data/base.py): the data's content is fixed by the data config's own seed (``data.seed`` of
the shapes, ``data.split_seed`` of CIFAR's validation split); the training order and the augmentation follow
the run's ``seed``. Two runs of a seed sweep therefore train on the same images, each in its own order and
with its own flips and crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DistributedSampler

from lficam.data import ShapesDataModule
from lficam.data.base import ClassificationDataModule
from lficam.data.seeding import EpochIndex, EpochShuffleSampler
from tests.conftest import compose_train
from tests.test_data_real import write_cifar10, write_image_folder

SHAPES_TINY = ["data.image_size=16", "data.train_size=32", "data.val_size=8", "data.test_size=8"]


def _data_module(kind: str, seed: int, tmp_path: Path) -> ClassificationDataModule:
    """The data module a run with ``seed=`` builds, the way train.py builds it."""
    root = tmp_path / kind
    if kind == "shapes":
        overrides = [*SHAPES_TINY, "data.cache_dir=null"]
    elif kind == "cifar10":
        if not root.exists():
            write_cifar10(root, "binary", per_batch=8)
        overrides = ["data=cifar10", f"data.root={root}", "data.val_size=8"]
    else:
        if not root.exists():
            write_image_folder(root)
        overrides = ["data=image_folder", f"data.root={root}", "data.num_classes=2", "data.image_size=16"]
    cfg = compose_train([*overrides, f"seed={seed}"], tmp_path / f"run{seed}")
    pl.seed_everything(cfg.seed)  # what train.py does before it builds the data
    data = instantiate(cfg.data)
    data.setup("fit")
    return data


def _content(data: ClassificationDataModule) -> list[Any]:
    """What the data set is, before any augmentation: images, labels, masks and the split."""
    train, val = data.train_set, data.val_set
    if hasattr(train, "masks"):  # shapes
        return [train.images, train.labels, train.masks, val.images, val.labels, val.masks]
    if hasattr(train, "indices"):  # CIFAR
        return [train.images, train.labels, train.indices, val.indices]
    return [train.samples, val.samples]


def _same(first: list[Any], second: list[Any]) -> bool:
    return all(
        torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        for a, b in zip(first, second, strict=True)
    )


def _epoch_zero(data: ClassificationDataModule) -> tuple[list[int], torch.Tensor]:
    """The training order of epoch 0 and every training image as augmented in epoch 0."""
    order = [int(i) for i in data.train_dataloader().sampler]
    images = torch.stack([data.train_set[EpochIndex(i, 0)]["image"] for i in range(len(data.train_set))])
    return order, images


@pytest.mark.parametrize("kind", ["shapes", "cifar10", "image_folder"])
def test_run_seed_changes_order_and_augmentation_not_the_data(kind: str, tmp_path: Path) -> None:
    first, again, other = (_data_module(kind, seed, tmp_path) for seed in (1, 1, 2))
    assert _same(_content(first), _content(other))
    order, augmented = _epoch_zero(first)
    assert sorted(order) == list(range(len(first.train_set)))
    same_order, same_images = _epoch_zero(again)
    assert same_order == order and torch.equal(same_images, augmented)
    other_order, other_images = _epoch_zero(other)
    assert other_order != order
    assert any(not torch.equal(a, b) for a, b in zip(augmented, other_images))  # other flips and crops


def test_shapes_content_seed_changes_the_images_only() -> None:
    base = {"image_size": 16, "train_size": 16, "val_size": 4, "test_size": 4, "cache_dir": None}
    first = ShapesDataModule(**base, seed=0, shuffle_seed=7)
    other = ShapesDataModule(**base, seed=1, shuffle_seed=7)
    for data in (first, other):
        data.setup("fit")
    assert not torch.equal(first.train_set.images, other.train_set.images)
    assert list(first.train_dataloader().sampler) == list(other.train_dataloader().sampler)
    flips = [[data.train_set.draw(i) & 1 for i in range(16)] for data in (first, other)]
    assert flips[0] == flips[1]


def _expected_epoch(data: ShapesDataModule, epoch: int) -> tuple[list[int], torch.Tensor]:
    """Epoch ``epoch`` computed here in the main process, from plain indices and set_epoch."""
    sampler = EpochShuffleSampler(len(data.train_set), data.shuffle_seed)
    sampler.set_epoch(epoch)
    order = [int(i) for i in sampler]
    dataset = data.train_set
    dataset.set_epoch(epoch)
    images = torch.stack([dataset[i]["image"] for i in order])
    dataset.set_epoch(0)
    return order, images


@pytest.mark.parametrize(("workers", "persistent"), [(0, False), (2, False), (2, True)])
def test_every_epoch_reaches_the_workers(workers: int, persistent: bool) -> None:
    data = ShapesDataModule(
        image_size=16,
        train_size=24,
        val_size=4,
        test_size=4,
        batch_size=8,
        cache_dir=None,
        num_workers=workers,
        persistent_workers=persistent,
        shuffle_seed=5,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    assert loader.persistent_workers == persistent

    def start_epoch(epoch: int) -> None:  # what Lightning and LitClassifier.on_train_epoch_start do
        loader.sampler.set_epoch(epoch)
        data.train_set.set_epoch(epoch)

    # Lightning makes the first training iterator before it sets the epoch and, resuming at epoch 1,
    # trains that epoch from it
    early = iter(loader)
    start_epoch(1)
    epochs = {1: list(early)}
    for epoch in (2, 3):  # later epochs: new iterators; persistent workers keep their copy of the data set
        start_epoch(epoch)
        epochs[epoch] = list(loader)
    for epoch, batches in epochs.items():
        order, images = _expected_epoch(data, epoch)
        assert torch.cat([b["index"] for b in batches]).tolist() == order, epoch
        assert torch.equal(torch.cat([b["image"] for b in batches]), images), epoch
    assert epochs[1][0]["index"].tolist() != epochs[2][0]["index"].tolist()


def test_sampler_under_ddp_splits_one_order_and_is_kept_by_lightning() -> None:
    whole = EpochShuffleSampler(10, seed=3)
    whole.set_epoch(2)
    order = [int(i) for i in whole]
    ranks = [EpochShuffleSampler(10, seed=3, num_replicas=4, rank=r) for r in range(4)]
    for sampler in ranks:
        sampler.set_epoch(2)
    parts = [list(sampler) for sampler in ranks]
    assert [len(p) for p in parts] == [3, 3, 3, 3] == [len(s) for s in ranks]
    padded = order + order[:2]  # 12 = 4 × 3, padded with the order's start as PyTorch does
    assert [int(i) for i in parts[1]] == padded[1::4]
    assert all(i.epoch == 2 for part in parts for i in part)
    # Lightning swaps any sampler that is not a DistributedSampler for its own under DDP
    assert isinstance(whole, DistributedSampler)
