"""The synthetic shapes: deterministic per (split, index), masks that match the drawn object."""

import math

import pytest
import torch

from lficam.core.errors import UserError
from lficam.data import ShapesDataModule
from lficam.data.shapes import SHAPES, ShapesConfig, _inside, render


def test_image_i_is_the_same_whatever_else_is_rendered():
    config = ShapesConfig(image_size=32)
    images, labels, masks = render(torch.arange(12), "train", config)
    alone = render(torch.tensor([7, 3]), "train", config)
    assert torch.equal(alone[0][0], images[7]) and torch.equal(alone[0][1], images[3])
    assert torch.equal(alone[1], labels[torch.tensor([7, 3])])
    assert torch.equal(alone[2], masks[torch.tensor([7, 3])])


def test_splits_and_seeds_differ():
    config = ShapesConfig(image_size=32)
    train = render(torch.arange(4), "train", config)[0]
    val = render(torch.arange(4), "val", config)[0]
    other_seed = render(torch.arange(4), "train", ShapesConfig(image_size=32, seed=1))[0]
    assert not torch.equal(train, val)
    assert not torch.equal(train, other_seed)


def test_known_pixels_of_a_rendered_image_are_stable():
    # A regression pin: image 0 of the training split must never change between versions or machines.
    images, labels, masks = render(torch.arange(1), "train", ShapesConfig(image_size=32))
    assert labels.tolist() == [9]
    assert int(masks.sum()) == 138
    assert int(images.long().sum()) == 379_943


def test_shape_predicates_hand_points():
    origin, far = torch.zeros(1), torch.full((1,), 1.2)
    assert _inside("disk", origin, origin) and not _inside("disk", far, origin)
    assert not _inside("ring", origin, origin) and _inside("ring", torch.full((1,), 0.8), origin)
    assert _inside("cross", torch.full((1,), 0.9), origin) and not _inside(
        "cross", torch.full((1,), 0.7), torch.full((1,), 0.7)
    )
    assert _inside("square", torch.full((1,), 0.79), torch.full((1,), -0.79))
    assert not _inside("crescent", torch.full((1,), 0.5), origin)


def test_masks_cover_the_object_and_only_it():
    images, labels, masks = render(torch.arange(200), "test", ShapesConfig(image_size=48))
    pixels = images.float() / 255
    # Away from its anti-aliased edge the object is one flat colour plus faint pixel noise (σ = 0.04)...
    core = -torch.nn.functional.max_pool2d(-masks.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1) > 0
    for i in range(20):
        assert pixels[i][:, core[i]].std(dim=1).max() < 0.05, i
    # ...and its area matches the drawn shape: a disk of radius r covers πr².
    area = masks.flatten(1).float().sum(1) / 48**2
    disk = labels == SHAPES.index("disk")
    assert area[disk].min() > math.pi * 0.2**2 * 0.85 and area[disk].max() < math.pi * 0.32**2 * 1.15
    assert masks.flatten(1).any(1).all()


def test_classes_are_balanced():
    _, labels, _ = render(torch.arange(2000), "train", ShapesConfig(image_size=16))
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() > 150 and counts.max() < 250


def test_datamodule_batches_and_cache(tmp_path):
    dm = ShapesDataModule(
        image_size=32, train_size=64, val_size=32, test_size=32, batch_size=16, cache_dir=str(tmp_path)
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (16, 32, 32) and batch["mask"].dtype == torch.bool
    assert batch["label"].max() < 10 and batch["index"].max() < 64
    assert len(list((tmp_path / "shapes").glob("*.pt"))) == 2
    cached = ShapesDataModule(
        image_size=32, train_size=64, val_size=32, test_size=32, cache_dir=str(tmp_path)
    )
    cached.setup("fit")
    assert torch.equal(cached.val_set.images, dm.val_set.images)
    # normalisation round trip
    image = dm.val_set[0]["image"]
    restored = dm.denormalize(image.unsqueeze(0))[0]
    torch.testing.assert_close(restored, dm.val_set.images[0].float() / 255, atol=1e-6, rtol=0)


def test_augmentation_is_a_function_of_epoch_and_index():
    dm = ShapesDataModule(image_size=32, train_size=64, val_size=16, test_size=16)
    dm.setup("fit")
    ds = dm.train_set
    flips = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        flips.append(
            [
                torch.equal(ds[i]["image"], ds.images[i].float().div(255).sub(0.5).div(0.25).flip(-1))
                for i in range(32)
            ]
        )
    assert flips[0] == flips[2] and flips[0] != flips[1]
    assert 8 < sum(flips[0]) < 24
    ds.set_epoch(0)
    item = ds[next(i for i in range(32) if flips[0][i])]
    assert torch.equal(item["mask"], ds.masks[item["index"]].flip(-1))


def test_bad_sizes_are_refused():
    with pytest.raises(UserError, match="num_classes=11"):
        ShapesDataModule(num_classes=11)
    with pytest.raises(UserError, match="image_size must be between"):
        ShapesDataModule(image_size=8)
