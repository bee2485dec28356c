"""Real-data loaders on tiny files written here in each real format, and the paper-recipe experiment configs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lficam.core.errors import UserError
from lficam.data import CIFAR10DataModule, CIFAR100DataModule, ImageFolderDataModule
from lficam.data.cifar import CIFAR_MEAN, CIFAR_STD

ROOT = Path(__file__).resolve().parents[1]
MEAN = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR_STD).view(3, 1, 1)
NAMES10 = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def write_cifar10(
    root: Path, kind: str, per_batch: int = 4, test: int = 6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The five training batches and the test batch of CIFAR-10 in the authors' binary or Python format."""
    images, labels = _images(5 * per_batch + test, 1), torch.arange(5 * per_batch + test) % 10
    folder = root / ("cifar-10-batches-bin" if kind == "binary" else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    chunks = [slice(i * per_batch, (i + 1) * per_batch) for i in range(5)] + [slice(5 * per_batch, None)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, part in zip(names, chunks):
        pixels, label = images[part].reshape(-1, 3072).numpy(), labels[part].numpy()
        if kind == "binary":
            records = np.concatenate([label[:, None].astype(np.uint8), pixels], axis=1)
            (folder / f"{name}.bin").write_bytes(records.tobytes())
        else:
            batch = {
                b"batch_label": name.encode(),
                b"labels": label.tolist(),
                b"data": pixels,
                b"filenames": [f"{i}.png".encode() for i in range(len(label))],
            }
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    if kind == "binary":
        (folder / "batches.meta.txt").write_text("\n".join(NAMES10) + "\n\n")
    else:
        meta = {b"label_names": [n.encode() for n in NAMES10], b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return images, labels


def write_cifar100(root: Path, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = _images(26, 2)
    fine, coarse = (torch.arange(26) * 7) % 100, (torch.arange(26) * 3) % 20
    folder = root / ("cifar-100-binary" if kind == "binary" else "cifar-100-python")
    folder.mkdir(parents=True)
    for name, part in (("train", slice(0, 20)), ("test", slice(20, None))):
        pixels = images[part].reshape(-1, 3072).numpy()
        if kind == "binary":
            head = torch.stack([coarse[part], fine[part]], 1).numpy().astype(np.uint8)
            (folder / f"{name}.bin").write_bytes(np.concatenate([head, pixels], axis=1).tobytes())
        else:
            batch = {
                b"data": pixels,
                b"fine_labels": fine[part].tolist(),
                b"coarse_labels": coarse[part].tolist(),
            }
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    if kind == "binary":
        (folder / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)))
        (folder / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)))
    return images, fine, coarse


def _expected(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255 - MEAN) / STD


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_cifar10_reads_pixels_labels_and_normalises(tmp_path: Path, kind: str) -> None:
    images, labels = write_cifar10(tmp_path, kind)
    data = CIFAR10DataModule(tmp_path, val_size=5, augment=False, batch_size=4)
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (15, 5, 6)
    assert data.num_classes == 10
    assert data.class_names == NAMES10
    for item in [*data.train_set, *data.val_set]:
        index = int(item["index"])
        assert int(item["label"]) == int(labels[index])
        torch.testing.assert_close(item["image"], _expected(images[index]))
    test_item = data.test_set[2]
    assert int(test_item["label"]) == int(labels[22])
    torch.testing.assert_close(test_item["image"], _expected(images[22]))


def test_binary_layout_is_red_then_green_then_blue_row_major(tmp_path: Path) -> None:
    write_cifar10(tmp_path, "binary")
    raw = (tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin").read_bytes()
    record = raw[3073 : 2 * 3073]  # the second image of batch 2: image 5 of the training files
    data = CIFAR10DataModule(tmp_path, val_size=0, augment=False)
    data.setup("fit")
    item = data.train_set[5]
    assert int(item["label"]) == record[0]
    pixel = item["image"] * STD + MEAN  # back to [0, 1]
    # green channel, row 3, column 7 sits at 1 + 1024 + 3·32 + 7
    assert round(float(pixel[1, 3, 7]) * 255) == record[1 + 1024 + 3 * 32 + 7]
    assert round(float(pixel[2, 31, 0]) * 255) == record[1 + 2048 + 31 * 32]


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_cifar100_fine_and_coarse_labels(tmp_path: Path, kind: str) -> None:
    images, fine, coarse = write_cifar100(tmp_path, kind)
    for labels, expected, classes in (("fine", fine, 100), ("coarse", coarse, 20)):
        data = CIFAR100DataModule(tmp_path, labels=labels, num_classes=classes, val_size=4, augment=False)
        data.setup("fit")
        assert data.num_classes == classes
        assert [int(x["label"]) for x in data.test_set] == expected[20:].tolist()
        item = data.val_set[0]
        assert int(item["label"]) == int(expected[int(item["index"])])
        torch.testing.assert_close(item["image"], _expected(images[int(item["index"])]))
    if kind == "binary":
        assert data.class_names[:2] == ["coarse0", "coarse1"]


def test_python_batch_that_would_run_code_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path, "python")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": Payload(), b"labels": [1]}, protocol=2))
    with pytest.raises(UserError, match=r"Refusing .*data_batch_3.*global io\.open is not allowed"):
        CIFAR10DataModule(tmp_path, val_size=2).setup("fit")
    assert not marker.exists()


def test_validation_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    write_cifar10(tmp_path, "binary")

    def split(seed: int) -> tuple[list[int], list[int]]:
        data = CIFAR10DataModule(tmp_path, val_size=6, split_seed=seed, augment=False)
        data.setup("fit")
        return data.train_set.indices.tolist(), data.val_set.indices.tolist()

    train, val = split(0)
    assert len(val) == 6
    assert sorted(train + val) == list(range(20))
    assert split(0) == (train, val)
    assert split(1)[1] != val


def test_augmentation_is_a_padded_crop_and_flip_drawn_per_epoch_and_image(tmp_path: Path) -> None:
    images, _ = write_cifar10(tmp_path, "binary")
    data = CIFAR10DataModule(tmp_path, val_size=0, augment=True, shuffle_seed=3)
    data.setup("fit")
    dataset = data.train_set
    draws = {}
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for item in range(len(dataset)):
            out = dataset[item]["image"]
            torch.testing.assert_close(
                out, dataset[item]["image"], rtol=0, atol=0
            )  # a function of (epoch, index)
            top, left, flip = draws[epoch, item] = dataset.crop_and_flip(item)
            assert 0 <= top <= 8
            assert 0 <= left <= 8
            padded = torch.nn.functional.pad(images[item].float() / 255, (4, 4, 4, 4))  # zero (black) padding
            window = padded[:, top : top + 32, left : left + 32]
            torch.testing.assert_close(out, ((window.flip(-1) if flip else window) - MEAN) / STD)
    flips = [flip for _, _, flip in draws.values()]
    assert 0 < sum(flips) < len(flips)
    assert any((top, left) != (4, 4) for top, left, _ in draws.values())
    assert any(draws[0, i] != draws[1, i] for i in range(len(dataset)))


def test_missing_cifar_names_the_folder_and_the_source(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        CIFAR10DataModule(tmp_path / "nowhere").setup("fit")
    message = str(info.value)
    assert "cifar-10-batches-bin/ or cifar-10-batches-py/" in message
    assert str(tmp_path / "nowhere") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    assert "data.root=" in message


def test_truncated_binary_batch_names_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path, "binary")
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"data_batch_4\.bin' is not a CIFAR binary batch: its 12287 bytes"):
        CIFAR10DataModule(tmp_path).setup("fit")


def test_wrong_class_count_is_refused() -> None:
    with pytest.raises(UserError, match="CIFAR-100 with coarse labels has 20 classes, got num_classes=100"):
        CIFAR100DataModule("x", labels="coarse", num_classes=100)


def write_image_folder(root: Path, splits: tuple[str, ...] = ("train", "val")) -> None:
    """Two classes: 'cat' images are solid red PNGs, 'dog' images JPEGs with a left/right split."""
    for split in splits:
        for i in range(3):
            (root / split / "cat").mkdir(parents=True, exist_ok=True)
            (root / split / "dog").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (255, 0, 0)).save(root / split / "cat" / f"{i}.png")
            dog = np.zeros((30, 40, 3), dtype=np.uint8)
            dog[:, 20:] = 200
            Image.fromarray(dog).save(root / split / "dog" / f"{i}.jpg", quality=95)


def test_image_folder_labels_shapes_and_normalisation(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    data = ImageFolderDataModule(tmp_path, num_classes=2, image_size=16, batch_size=2)
    data.setup()  # every stage: fit lists train/ and val/, test the test split (here val)
    assert data.class_names == ["cat", "dog"]
    assert len(data.train_set) == len(data.val_set) == len(data.test_set) == 6  # no test/: test = val
    assert data.test_set.samples == data.val_set.samples
    item = data.val_set[0]
    assert int(item["label"]) == 0
    assert item["image"].shape == (3, 16, 16)
    mean, std = torch.tensor(data.mean).view(3, 1, 1), torch.tensor(data.std).view(3, 1, 1)
    red = (torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1) - mean) / std
    torch.testing.assert_close(item["image"], red.expand(3, 16, 16), atol=1e-6, rtol=0)
    dog = data.val_set[3]
    assert int(dog["label"]) == 1
    # Resize(18) of 40×30 → 24×18, centre crop 16: the left half dark, the right half bright
    pixels = dog["image"] * std + mean
    assert float(pixels[:, :, :6].max()) < 0.05
    assert float(pixels[:, :, -6:].min()) > 0.7
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)


def test_image_folder_training_crops_are_seeded_per_epoch_and_image(tmp_path: Path) -> None:
    write_image_folder(tmp_path, ("train", "val", "test"))
    data = ImageFolderDataModule(tmp_path, num_classes=2, image_size=16, seed=5)
    data.setup()
    assert data.test_set.samples[0][0] == tmp_path / "test" / "cat" / "0.png"
    dataset = data.train_set
    first = dataset[4]["image"]
    torch.manual_seed(123)  # the global random state does not matter
    torch.testing.assert_close(dataset[4]["image"], first, rtol=0, atol=0)
    changed = []
    for epoch in range(1, 4):
        dataset.set_epoch(epoch)
        changed.append(not torch.equal(dataset[4]["image"], first))
    assert any(changed)


def test_corrupt_image_names_its_path(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    broken = tmp_path / "train" / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    data = ImageFolderDataModule(tmp_path, num_classes=2, image_size=16)
    data.setup("fit")
    index = [p for p, _ in data.train_set.samples].index(broken)
    with pytest.raises(
        UserError, match=rf"^Cannot read image '{broken}' \(UnidentifiedImageError.*remove or replace"
    ):
        data.train_set[index]


def test_image_folder_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"train' does not exist; expected .*/train/<class>/\*\.jpg"):
        ImageFolderDataModule(tmp_path / "none", num_classes=2).setup("fit")
    write_image_folder(tmp_path)
    with pytest.raises(
        UserError, match=r"has 2 class folders but data\.num_classes=5; set data\.num_classes=2"
    ):
        ImageFolderDataModule(tmp_path, num_classes=5).setup("fit")
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(UserError, match=r"class folders \['bird'\] that the training folder lacks"):
        ImageFolderDataModule(tmp_path, num_classes=2).setup("fit")
