"""Fashion-MNIST: the IDX reader, garment silhouettes and the data module, on tiny IDX files written here
(and on Debian's files where the package is installed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lficam.core.errors import UserError
from lficam.data import FashionMNISTDataModule
from lficam.data.fashion_mnist import DEBIAN_FOLDER, FILES, carve, locate, read_idx
from lficam.data.idx import write_idx
from lficam.data.masks import fill_holes, silhouettes

# --- tiny Fashion-MNIST files ---------------------------------------------------------------------------


def garment(label: int, index: int) -> np.ndarray:
    """A 28×28 'garment': a rectangle of rows 4…23 and columns c0…19 (c0 = 6 + index % 3) at grey level
    100 + 10·label, with a dark hole (rows 10…13, columns 10…13) inside and one faint background speck."""
    image = np.zeros((28, 28), dtype=np.uint8)
    c0 = 6 + index % 3
    image[4:24, c0:20] = 100 + 10 * label
    image[10:14, 10:14] = 0
    image[0, 27] = 20  # below the silhouette threshold (25)
    return image


def write_fashion(root: Path, train: int = 40, test: int = 12, gz: bool = True) -> tuple[np.ndarray, ...]:
    """The four Fashion-MNIST files (gzipped or plain) with ``train`` and ``test`` garments of cycling labels."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = []
    for split, count, offset in (("train", train, 0), ("test", test, 7)):
        labels = ((np.arange(count) + offset) % 10).astype(np.uint8)
        images = np.stack([garment(int(label), i) for i, label in enumerate(labels)])
        names = FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(root / f"{names[0]}{suffix}", images)
        write_idx(root / f"{names[1]}{suffix}", labels)
        arrays += [images, labels]
    return tuple(arrays)


# --- IDX ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_reads_shape_dtype_and_a_known_element(tmp_path: Path, gz: bool) -> None:
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    loaded = read_idx(path)
    assert loaded.dtype == torch.uint8 and tuple(loaded.shape) == (2, 3, 5)
    assert int(loaded[1, 2, 4]) == 29
    floats = np.array([[1.5, -2.0]], dtype=np.float32)
    write_idx(tmp_path / "f.idx", floats)
    assert (tmp_path / "f.idx").read_bytes()[:4] == bytes([0, 0, 0x0D, 2])
    assert read_idx(tmp_path / "f.idx").tolist() == [[1.5, -2.0]]  # big-endian on disk, native in memory


def test_idx_header_is_checked_before_anything_is_allocated(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"

    def refused(data: bytes, message: str) -> None:
        path.write_bytes(data)
        with pytest.raises(UserError, match=rf"^'{path}' is not a valid IDX file: {message}"):
            read_idx(path)

    refused(b"\x00\x00", "it has 2 bytes, fewer than the 4 of a header")
    refused(b"\x01\x00\x08\x01" + b"\x00" * 4, "its magic starts with 0100 instead of 0000")
    refused(b"\x00\x00\x07\x01" + b"\x00" * 4, "its element type code is 0x07")
    refused(b"\x00\x00\x08\x09", "it has 9 dimensions; this reader accepts 1 to 4")
    refused(b"\x00\x00\x08\x02\x00\x00\x00\x01", "its header ends before its 2 sizes")
    # zero elements, but numpy cannot even describe a (0, 2³²−1, 2³²−1) array (found by the fuzzer)
    refused(
        b"\x00\x00\x08\x03" + bytes(4) + b"\xff" * 8,
        r"its sizes \(0, 4294967295, 4294967295\) describe an array",
    )
    # a header claiming 4 G elements on a 12-byte file: refused from the file's size, nothing allocated
    refused(b"\x00\x00\x08\x01\xff\xff\xff\xff" + b"abcd", r"its header announces shape \(4294967295,\)")
    refused(
        b"\x00\x00\x08\x01\x00\x00\x00\x03" + b"abcd",
        r"its header announces shape \(3,\) \(3 data bytes\) but it holds 4",
    )
    gz = tmp_path / "x.idx.gz"
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x02" + (1 << 31).to_bytes(4, "big") + (8).to_bytes(4, "big")))
    with pytest.raises(UserError, match=r"more than its .* compressed bytes can hold"):
        read_idx(gz)
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
    with pytest.raises(UserError, match="announces 5 data bytes but the file holds only 2"):
        read_idx(gz)
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcdef"))
    with pytest.raises(UserError, match="it holds more bytes than the 5 its header announces"):
        read_idx(gz)
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-6])
    with pytest.raises(UserError, match="its gzip stream is broken"):
        read_idx(gz)


# --- silhouettes ------------------------------------------------------------------------------------------


def test_fill_holes_fills_enclosed_background_only() -> None:
    ring = torch.zeros(1, 7, 7, dtype=torch.bool)
    ring[0, 1:6, 1:6] = True
    ring[0, 2:5, 2:5] = False  # a 3×3 hole
    cup = ring.clone()
    cup[0, 1, 3] = False  # an opening to the border at the top: no longer a hole
    diagonal = ring.clone()
    diagonal[0, 1, 1] = False  # a corner gap: the hole touches the outside only diagonally (8-connected)
    filled = fill_holes(torch.cat([ring, cup, diagonal]))
    assert filled[0].sum() == 25 and filled[0, 1:6, 1:6].all()
    assert filled[1].sum() == cup[0].sum()  # unchanged
    assert filled[2].sum() == 24 and not filled[2, 1, 1]  # 4-connected background: the hole stays a hole


@pytest.mark.slow
def test_fill_holes_agrees_with_scipy_on_random_masks() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    masks = torch.rand(300, 17, 23, generator=torch.Generator().manual_seed(0)) > 0.45
    expected = np.stack([ndimage.binary_fill_holes(m) for m in masks.numpy()])
    assert np.array_equal(fill_holes(masks).numpy(), expected)


def test_silhouette_of_the_tiny_garment_is_its_rectangle() -> None:
    image = torch.from_numpy(garment(3, 1))[None]
    mask = silhouettes(image)[0]
    assert int(mask.sum()) == 20 * 13  # rows 4…23, columns 7…19: the hole filled, the speck left out
    assert mask[4:24, 7:20].all() and not mask[0, 27]


# --- the data module ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_known_pixel_label_and_mask_after_loading(tmp_path: Path, gz: bool) -> None:
    train_images, train_labels, test_images, test_labels = write_fashion(tmp_path, gz=gz)
    data = FashionMNISTDataModule(tmp_path, image_size=28, val_size=10, augment=False, batch_size=4)
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (30, 10, 12)
    train_idx, _ = carve(40, 10, seed=0)
    kept = train_images[train_idx.numpy()]
    mean, std = kept.mean() / 255, kept.std() / 255  # the training split's own statistics
    assert data.mean == pytest.approx((mean,) * 3, abs=1e-6)
    assert data.std == pytest.approx((std,) * 3, abs=1e-6)
    item = data.test_set[5]
    assert int(item["label"]) == int(test_labels[5]) == 2
    assert item["image"].shape == (3, 28, 28)
    pixel = (int(test_images[5, 4, 6 + 5 % 3]) / 255 - mean) / std  # the rectangle's top-left pixel
    torch.testing.assert_close(item["image"][:, 4, 8], torch.full((3,), pixel, dtype=torch.float32))
    assert int(item["mask"].sum()) == 20 * 12 and item["mask"][4:24, 8:20].all()
    first = data.train_set[0]
    assert int(first["label"]) == int(train_labels[int(train_idx[0])])
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 28, 28) and batch["mask"].shape == (4, 28, 28)


def test_resized_images_keep_masks_on_the_garment(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    data = FashionMNISTDataModule(tmp_path, image_size=56, val_size=10, augment=False)
    data.setup("fit")
    item = data.test_set[0]  # columns 6…19 at 28 px → 12…39 at 56 px, rows 4…23 → 8…47
    assert item["image"].shape == (3, 56, 56)
    assert int(item["mask"].sum()) == 40 * 28 and item["mask"][8:48, 12:40].all()


def test_validation_carve_follows_the_data_seed(tmp_path: Path) -> None:
    train, val = carve(40, 10, seed=0)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(40))
    assert torch.equal(carve(40, 10, seed=0)[1], val)
    assert not torch.equal(carve(40, 10, seed=1)[1], val)
    with pytest.raises(UserError, match="val_size=40 must be at least 0 and leave training images"):
        carve(40, 40, seed=0)


def test_augmentation_moves_image_and_mask_together(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    data = FashionMNISTDataModule(tmp_path, image_size=28, val_size=10, augment_seed=3, padding=4)
    data.setup("fit")
    dataset, seen = data.train_set, set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            pixels = item["image"][0] * data.std[0] + data.mean[0]
            # the garment is the only content above 0.3: its filled outline must be the mask, wherever it went
            assert torch.equal(item["mask"], fill_holes((pixels > 0.3)[None])[0])
            assert int(item["mask"].sum()) in (20 * 14, 20 * 13, 20 * 12)  # the padding never cuts it
            seen.add(dataset.crop_and_flip(i))
            torch.testing.assert_close(dataset[i]["image"], item["image"], rtol=0, atol=0)
    assert len(seen) > 20  # crops and flips vary over images and epochs
    assert {flip for _, _, flip in seen} == {False, True}


def test_missing_files_name_the_folder_and_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        FashionMNISTDataModule(tmp_path / "nowhere").setup("fit")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "(does not exist)" in message
    assert "train-images-idx3-ubyte[.gz]" in message
    assert "make fashion-mnist" in message and "data.root=" in message


def test_wrong_files_are_refused_with_their_names(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.full(12, 11, dtype=np.uint8))
    with pytest.raises(
        UserError, match=r"t10k-labels-idx1-ubyte\.gz' has label 11; Fashion-MNIST labels are 0…9"
    ):
        FashionMNISTDataModule(tmp_path, val_size=10).setup("fit")
    write_idx(labels, np.zeros(11, dtype=np.uint8))
    with pytest.raises(UserError, match=r"not one uint8 label for each of the 12 images"):
        FashionMNISTDataModule(tmp_path, val_size=10).setup("fit")
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((12, 32, 32), dtype=np.uint8))
    with pytest.raises(UserError, match=r"shape \(12, 32, 32\), not N×28×28"):
        FashionMNISTDataModule(tmp_path, val_size=10).setup("fit")


def test_prepared_splits_are_cached_and_equal_a_fresh_preparation(tmp_path: Path) -> None:
    write_fashion(tmp_path / "files")
    cache = tmp_path / "cache"
    options = {"image_size": 32, "val_size": 10, "augment": False}
    fresh = FashionMNISTDataModule(tmp_path / "files", cache_dir=str(cache), **options)
    fresh.setup("fit")
    assert len(list((cache / "fashion_mnist").glob("splits-*.pt"))) == 1
    cached = FashionMNISTDataModule(tmp_path / "files", cache_dir=str(cache), **options)
    cached.setup("fit")
    for a, b in ((fresh.test_set, cached.test_set), (fresh.train_set, cached.train_set)):
        assert (
            torch.equal(a.images, b.images)
            and torch.equal(a.masks, b.masks)
            and torch.equal(a.labels, b.labels)
        )
    write_fashion(tmp_path / "files", test=11)  # other files: another key, not the stale cache
    changed = FashionMNISTDataModule(tmp_path / "files", cache_dir=str(cache), **options)
    changed.setup("fit")
    assert len(changed.test_set) == 11


@pytest.mark.skipif(
    not (DEBIAN_FOLDER / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (`make fashion-mnist`)",
)
def test_debian_files_are_fashion_mnist() -> None:
    files = locate(None)
    images, labels = read_idx(files["test"][0]), read_idx(files["test"][1])
    assert tuple(images.shape) == (10000, 28, 28) and tuple(labels.shape) == (10000,)
    assert torch.bincount(labels.long()).tolist() == [1000] * 10
    assert int(read_idx(files["train"][1]).numel()) == 60000
    masks = silhouettes(images[:500])
    share = masks.float().mean(dim=(1, 2))
    assert float(share.min()) > 0.1 and float(share.max()) < 0.95  # every garment has a real silhouette
