"""Image folders with masks and VOC boxes: decoding every format to RGB, ground truth that follows the image's
geometry, the rule for boxes, and one sentence naming the file for each kind of bad data."""

from __future__ import annotations

import logging
import math
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lficam.core.errors import UserError
from lficam.data import ImageFolderDataModule
from lficam.data.boxes import Box, boxes_to_mask, chosen_boxes, read_box_mask, read_voc
from lficam.data.decode import _jpeg_size, _with_pillow, decode_rgb, looks_complete
from lficam.data.image_folder import SampleTable
from lficam.data.masks import read_mask

# Images of 64×32 px (W×H): black with a white 16×8 block at rows 4…11, columns 20…35 (cat) or 40…55 (dog).
BLOCKS = {"cat": (4, 12, 20, 36), "dog": (4, 12, 40, 56)}


def block_image(name: str) -> np.ndarray:
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    top, bottom, left, right = BLOCKS[name]
    image[top:bottom, left:right] = 255
    return image


def voc(boxes: list[tuple[str, int, int, int, int]], size: tuple[int, int] | None = (64, 32)) -> str:
    stated = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    )
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for n, a, b, c, d in boxes
    )
    return f"<annotation><filename>x.jpg</filename>{stated}{objects}</annotation>"


def write_folder(root: Path, splits: tuple[str, ...] = ("train", "val"), truth: bool = True) -> None:
    """Cats as PNGs with palette PNG masks, dogs as JPEGs with VOC boxes (the dog's box plus a person's)."""
    for split in splits:
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(block_image("cat")).save(root / split / "cat" / f"c{i}.png")
            Image.fromarray(block_image("dog")).save(root / split / "dog" / f"d{i}.jpg", quality=95)
            if not truth:
                continue
            top, bottom, left, right = BLOCKS["cat"]
            mask = np.zeros((32, 64), dtype=np.uint8)
            mask[top:bottom, left:right] = 1
            (root / "masks" / split / "cat").mkdir(parents=True, exist_ok=True)
            palette = Image.fromarray(mask, mode="P")
            palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
            palette.save(root / "masks" / split / "cat" / f"c{i}.png")
            top, bottom, left, right = BLOCKS["dog"]
            (root / "boxes" / split / "dog").mkdir(parents=True, exist_ok=True)
            xml = voc([("person", 17, 1, 20, 4), ("dog", left + 1, top + 1, right, bottom)])
            (root / "boxes" / split / "dog" / f"d{i}.xml").write_text(xml)


# --- decoding -------------------------------------------------------------------------------------------


def _saved(tmp_path: Path, image: Image.Image, name: str, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_every_format_and_mode_decodes_to_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb[2, 5] = (10, 200, 30)
    grey = np.full((6, 8), 77, dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((6, 8), 9, dtype=np.uint8)])  # alpha is dropped, not composited
    palette = Image.fromarray(rgb).quantize(colors=4)
    cases = {
        "rgb.png": (Image.fromarray(rgb), {}, (10, 200, 30)),
        "grey.png": (Image.fromarray(grey), {}, (77, 77, 77)),
        "rgba.png": (Image.fromarray(rgba), {}, (10, 200, 30)),
        "palette.png": (palette, {}, tuple(palette.convert("RGB").getpixel((5, 2)))),
        "rgb.bmp": (Image.fromarray(rgb), {}, (10, 200, 30)),
        "palette.bmp": (palette, {}, tuple(palette.convert("RGB").getpixel((5, 2)))),
        "rgb.webp": (Image.fromarray(rgb), {"lossless": True}, (10, 200, 30)),
        "rgba.webp": (Image.fromarray(rgba), {"lossless": True}, (10, 200, 30)),
        "grey16.png": (Image.fromarray(np.full((6, 8), 51400, dtype=np.uint16)), {}, (200, 200, 200)),
        "rgb.tif": (Image.fromarray(rgb), {}, (10, 200, 30)),
    }
    for name, (image, options, expected) in cases.items():
        decoded = decode_rgb(_saved(tmp_path, image, name, **options))
        assert decoded.shape == (3, 6, 8) and decoded.dtype == torch.uint8, name
        assert tuple(decoded[:, 2, 5].tolist()) == expected, name
    jpeg = decode_rgb(_saved(tmp_path, Image.fromarray(grey), "grey.jpg", quality=100))
    assert jpeg.shape == (3, 6, 8) and (jpeg.int() - 77).abs().max() <= 2


def test_jpeg_size_is_read_from_the_frame_header(tmp_path: Path) -> None:
    for mode, options in (
        ("RGB", {}),
        ("L", {"progressive": True}),
        ("CMYK", {"exif": b"Exif\x00\x00" + bytes(300)}),
    ):
        data = _saved(tmp_path, Image.new(mode, (123, 45)), "a.jpg", **options).read_bytes()
        assert _jpeg_size(data) == (123, 45), mode
    assert _jpeg_size(b"\xff\xd8\xff\xe0\x00") is None  # cut before any frame: Pillow decides


def test_torchvision_and_pillow_give_the_same_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    for name, options in (("a.png", {}), ("a.jpg", {"quality": 90}), ("a.webp", {"quality": 80})):
        path = _saved(tmp_path, image, name, **options)
        assert torch.equal(decode_rgb(path), _with_pillow(path, path.read_bytes())), name


def test_unreadable_images_name_their_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(
        UserError, match=rf"^Cannot read image '{garbage}' \(UnidentifiedImageError.*remove or replace"
    ):
        decode_rgb(garbage)
    whole = _saved(tmp_path, Image.fromarray(block_image("cat")), "whole.jpg", quality=90).read_bytes()
    for suffix, data in ((".jpg", whole), (".png", None)):
        if data is None:
            data = _saved(tmp_path, Image.fromarray(block_image("cat")), "whole.png").read_bytes()
        truncated = tmp_path / f"truncated{suffix}"
        truncated.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(
            UserError, match=rf"^Cannot read image '{truncated}' \(.*data\.skip_bad_images=true"
        ):
            decode_rgb(truncated)
        assert "truncated" in looks_complete(truncated)
    huge = tmp_path / "huge.png"  # a 10 000² header on a tiny file: refused before any decoder allocates it
    data = bytearray(_saved(tmp_path, Image.new("L", (1, 1)), "one.png").read_bytes())
    data[16:24] = (10_000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR's checksum, so the header parses
    huge.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"its 100000000 pixels exceed PIL.s limit of \d+"):
        decode_rgb(huge)


# --- masks and boxes --------------------------------------------------------------------------------------


def test_mask_files_nonzero_is_object_and_size_must_match(tmp_path: Path) -> None:
    values = np.zeros((3, 4), dtype=np.uint8)
    values[1, 2] = 255
    values[2, 0] = 1
    Image.fromarray(values).save(tmp_path / "grey.png")
    mask = read_mask(tmp_path / "grey.png", (4, 3), "img.jpg")
    assert mask.tolist() == [[False] * 4, [False, False, True, False], [True, False, False, False]]
    colour = np.zeros((3, 4, 4), dtype=np.uint8)
    colour[0, 3, 1] = 5  # green counts; alpha (channel 3) never does
    colour[..., 3] = 255
    Image.fromarray(colour).save(tmp_path / "rgba.png")
    assert read_mask(tmp_path / "rgba.png", (4, 3), "img.jpg").nonzero().tolist() == [[0, 3]]
    with pytest.raises(UserError, match=r"grey\.png' is 4×3 px but its image 'img\.jpg' is 5×3"):
        read_mask(tmp_path / "grey.png", (5, 3), "img.jpg")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UserError, match=r"^Cannot read mask '.*bad\.png'"):
        read_mask(tmp_path / "bad.png", (4, 3), "img.jpg")


def test_box_to_mask_on_a_hand_made_box() -> None:
    mask = boxes_to_mask([Box("dog", 2, 1, 4, 2)], width=5, height=4)  # VOC: 1-based, inclusive
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0:2, 1:4] = True
    assert torch.equal(mask, expected) and int(mask.sum()) == 6
    clipped = boxes_to_mask([Box("dog", 4.4, 3.6, 9, 9)], width=5, height=4)  # rounded, clipped to the image
    assert clipped.nonzero().tolist() == [[3, 3], [3, 4]]
    union = boxes_to_mask([Box("a", 1, 1, 1, 1), Box("b", 5, 4, 5, 4)], width=5, height=4)
    assert union.nonzero().tolist() == [[0, 0], [3, 4]]
    boxes = [Box("Dog ", 1, 1, 2, 2), Box("person", 3, 3, 4, 4), Box("dog", 5, 1, 5, 1)]
    assert chosen_boxes(boxes, "dog") == [boxes[0], boxes[2]]  # the class's boxes (case and spaces ignored)
    assert chosen_boxes(boxes, "cat") == boxes  # none is the class: all of them


def test_voc_files_parse_and_bad_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(voc([("dog", 3, 4, 10.5, 12)]))
    size, boxes = read_voc(path)
    assert size == (64, 32) and boxes == [Box("dog", 3.0, 4.0, 10.5, 12.0)]
    assert int(read_box_mask(path, "dog", (64, 32), "x.jpg").sum()) == 9 * 9  # columns 2…10, rows 3…11

    def refused(text: str, reason: str) -> None:
        path.write_text(text)
        with pytest.raises(UserError, match=rf"^Cannot use box file '{path}': {reason}"):
            read_box_mask(path, "dog", (64, 32), "x.jpg")

    refused("<annotation><object>", "it is not well-formed XML")
    laughs = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY m "&l;&l;&l;">]><annotation>&m;</annotation>'
    refused(laughs, "it declares a document type or entities, which this loader never expands")
    external = '<!DOCTYPE a SYSTEM "file:///etc/passwd"><annotation/>'
    refused(external, "it declares a document type")
    refused("<labels/>", "its root element is <labels>, not <annotation>")
    refused('<?xml version="1.0" encoding="Atf-8"?><annotation/>', "its XML declaration names an encoding")
    refused("<annotation><object><name>dog</name></object></annotation>", "object 1 has no <bndbox>")
    refused(
        voc([("dog", 1, 1, 2, 2)]).replace("<xmax>2</xmax>", "<xmax>two</xmax>"), "object 1's <xmax> is 'two'"
    )
    refused(voc([("dog", 5, 1, 2, 2)]), "object 1 has xmax < xmin")
    refused(voc([("dog", 1, 1, 2, 2)], size=(60, 32)), r"it describes a 60×32 image but 'x\.jpg' is 64×32")


# --- the data module -----------------------------------------------------------------------------------


def test_eval_masks_follow_resize_and_centre_crop(tmp_path: Path) -> None:
    write_folder(tmp_path)
    data = ImageFolderDataModule(tmp_path, image_size=16, resize_size=16)  # num_classes read from train/
    assert data.num_classes == 2
    data.setup()
    assert data.class_names == ["cat", "dog"]
    # 64×32 → 32×16 (half), centre crop 16 → columns 8…23 of the half-size image
    cat, dog = data.val_set[0], data.val_set[3]
    assert int(cat["label"]) == 0 and int(dog["label"]) == 1
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[2:6, 2:10] = True  # rows 4…11 → 2…5; columns 20…35 → 10…17 → 2…9 after the crop
    assert torch.equal(cat["mask"], expected)  # from the palette mask
    pixels = cat["image"] * torch.tensor(data.std).view(3, 1, 1) + torch.tensor(data.mean).view(3, 1, 1)
    assert torch.equal(pixels.mean(0) > 0.5, expected)  # the image went through the same geometry
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[2:6, 12:16] = True  # the dog's box, columns 40…55 → 20…27 → 12…15 (cut by the crop)
    assert torch.equal(dog["mask"], expected)  # not the person's box (columns 16…19 → 0…1, rows 0…1)
    batch = next(iter(data.test_dataloader()))
    assert batch["mask"].shape == (6, 16, 16) and batch["mask"].dtype == torch.bool


def test_box_masks_without_crop_and_the_union_rule(tmp_path: Path) -> None:
    write_folder(tmp_path)
    data = ImageFolderDataModule(tmp_path, image_size=32, resize_size=32)
    data.setup("validate")
    dog = data.val_set[3]
    # the short side is 32 already; the centre crop 32 of 64 keeps columns 16…47: the dog's box (columns
    # 40…55) → 24…31; the person's box (columns 16…19, rows 0…3) → 0…3 would show if it were taken
    assert dog["mask"].nonzero()[:, 1].unique().tolist() == list(range(24, 32))
    assert dog["mask"].nonzero()[:, 0].unique().tolist() == list(range(4, 12))
    assert not dog["mask"][:4, :4].any()  # the person's box is not the class's


def test_training_crops_move_masks_with_images(tmp_path: Path) -> None:
    write_folder(tmp_path)
    data = ImageFolderDataModule(tmp_path, image_size=24, scale=(0.3, 1.0), seed=1)
    data.setup("fit")
    dataset, checked = data.train_set, 0
    mean, std = torch.tensor(data.mean).view(3, 1, 1), torch.tensor(data.std).view(3, 1, 1)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            bright = (item["image"] * std + mean).mean(0) > 0.5
            if not item["mask"].any() and not bright.any():
                continue  # the crop missed the block
            assert item["mask"].any() and bright.any(), (epoch, i)
            # the block's centre in the image and in the mask agree (a flip or crop of one alone would not)
            for axis in (0, 1):
                centre_mask = item["mask"].nonzero()[:, axis].float().mean()
                centre_image = bright.nonzero()[:, axis].float().mean()
                assert abs(float(centre_mask - centre_image)) <= 1.0, (epoch, i, axis)
            checked += 1
            assert torch.equal(dataset[i]["mask"], item["mask"])  # a function of (seed, epoch, index)
    assert checked > 12


def test_splits_without_ground_truth_carry_no_mask(tmp_path: Path) -> None:
    write_folder(tmp_path, truth=False)
    data = ImageFolderDataModule(tmp_path, num_classes=2, image_size=16)
    data.setup()
    assert set(data.val_set[0]) == {"image", "label", "index"} and not data.has_masks


def test_images_without_their_file_get_an_empty_mask_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_folder(tmp_path)
    (tmp_path / "masks" / "val" / "cat" / "c1.png").unlink()
    with caplog.at_level(logging.WARNING, logger="lficam"):
        data = ImageFolderDataModule(tmp_path, image_size=16, resize_size=16)
        data.setup("validate")
    warnings = [r.getMessage() for r in caplog.records if "neither a mask" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("1 of the 6 val images")
    assert str(tmp_path / "val" / "cat" / "c1.png") in warnings[0]
    assert not data.val_set[1]["mask"].any() and data.val_set[0]["mask"].any()


def test_bad_layouts_and_files_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"train' does not exist; expected .*/train/<class>/\*\.jpg .*masks/<split>"
    ):
        ImageFolderDataModule(tmp_path / "none")
    write_folder(tmp_path, splits=("train",))
    with pytest.raises(UserError, match=r"val' does not exist"):
        ImageFolderDataModule(tmp_path).setup("fit")
    write_folder(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(
        UserError, match=r"has 3 class folders but data\.num_classes=2; set data\.num_classes=3"
    ):
        ImageFolderDataModule(tmp_path, num_classes=2).setup("fit")
    with pytest.raises(UserError, match=rf"^Class folder '{tmp_path / 'train' / 'bird'}' holds no images"):
        ImageFolderDataModule(tmp_path).setup("fit")
    (tmp_path / "train" / "bird").rmdir()
    Image.new("L", (10, 10)).save(tmp_path / "masks" / "train" / "cat" / "c0.png")
    (tmp_path / "boxes" / "train" / "dog" / "d0.xml").write_text("<annotation><object>")
    data = ImageFolderDataModule(tmp_path, image_size=16)
    data.setup("fit")
    with pytest.raises(UserError, match=r"c0\.png' is 10×10 px but its image '.*c0\.png' is 64×32"):
        data.train_set[0]
    with pytest.raises(UserError, match=r"d0\.xml': it is not well-formed XML"):
        data.train_set[3]


def test_skip_bad_images_warns_once_with_count_and_paths(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_folder(tmp_path)
    garbage = tmp_path / "train" / "dog" / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    whole = (tmp_path / "train" / "cat" / "c2.png").read_bytes()
    cut = tmp_path / "train" / "cat" / "cut.png"
    cut.write_bytes(whole[:-30])
    strict = ImageFolderDataModule(tmp_path, image_size=16)
    strict.setup("fit")
    assert len(strict.train_set) == 8
    with caplog.at_level(logging.WARNING, logger="lficam"):
        data = ImageFolderDataModule(tmp_path, image_size=16, skip_bad_images=True)
        data.setup("fit")
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping")]
    assert len(skipped) == 1 and skipped[0].startswith("Skipping 2 unreadable images of the train split")
    assert str(cut) in skipped[0] and str(garbage) in skipped[0]
    assert len(data.train_set) == 6
    # a file that passes the cheap check but does not decode: the next readable image stands in, once logged
    broken = data.train_set.samples.path(0)
    broken.write_bytes(whole[:60] + bytes(len(whole) - 72) + whole[-12:])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lficam"):
        first, again = data.train_set[0], data.train_set[0]
    assert int(first["index"]) == 0 and torch.equal(first["image"], again["image"])
    assert torch.equal(first["image"], data.train_set[1]["image"])
    assert [r.getMessage() for r in caplog.records] == [
        f"Skipping unreadable image {broken} (replaced by the next readable one)."
    ]


def test_sample_table_is_flat_and_pickles_small(tmp_path: Path) -> None:
    paths = [f"/data/train/class_{i % 7}/image_{i:07d}.JPEG" for i in range(20000)]
    table = SampleTable(paths, [i % 7 for i in range(20000)])
    assert table[12345] == (Path(paths[12345]), 12345 % 7) and table[-1][0] == Path(paths[-1])
    assert pickle.loads(pickle.dumps(table)) == table
    assert {type(v) for v in vars(table).values()} == {np.ndarray}  # no Python object per sample


@pytest.mark.slow
def test_image_folder_trains_with_ground_truth_and_counted_classes(tmp_path: Path) -> None:
    """data.num_classes stays null: train.py builds the model with the count of train/'s class folders."""
    from tests.test_data_fashion_train import LOCALISATION, train_cli

    write_folder(tmp_path / "folder", splits=("train", "val", "test"))
    overrides = [
        "data=image_folder",
        f"data.root={tmp_path / 'folder'}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=3",  # six training images
    ]
    summary = train_cli(tmp_path, overrides)
    for key in ("test/acc", *LOCALISATION):
        assert math.isfinite(summary["metrics"][key]), key
    checkpoint = torch.load(
        Path(summary["run_dir"], summary["best_checkpoint"]), weights_only=True, map_location="cpu"
    )
    assert checkpoint["hyper_parameters"]["model_config"]["num_classes"] == 2
    assert checkpoint["hyper_parameters"]["data_config"]["num_classes"] == 2


# --- symbolic links: each real folder and image once --------------------------------------------------------


def write_twelve(root: Path) -> None:
    """train/ and val/ with six plain PNG images in each of cat/ and dog/ (no ground truth)."""
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(block_image(name)).save(root / split / name / f"{name[0]}{i}.png")


def _link_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Followed ")]


def test_a_symlink_loop_lists_every_image_once_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_twelve(tmp_path)
    (tmp_path / "train" / "cat" / "loop").symlink_to(tmp_path / "train" / "cat")  # back to its own folder
    with caplog.at_level(logging.WARNING, logger="lficam"):
        data = ImageFolderDataModule(tmp_path, image_size=16)
        data.setup("fit")
    assert len(data.train_set) == 12
    listed = [str(p) for p, _ in data.train_set.samples]
    assert not [p for p in listed if "/loop/" in p]
    assert _link_warnings(caplog) == [
        f"Followed 1 symbolic link under {tmp_path / 'train'}; 1 folder reached again (a link loop or a second "
        "path to a folder) was not walked again and 0 files reached by a second path counted once."
    ]


def test_a_symlinked_image_of_a_listed_file_counts_once_and_new_ones_are_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_twelve(tmp_path)
    cats = tmp_path / "train" / "cat"
    (cats / "alias.png").symlink_to(cats / "c0.png")  # a second path to a listed image
    (cats / "a_alias.png").symlink_to(cats / "c1.png")  # sorted before its target: the real path still wins
    elsewhere = tmp_path / "more_cats"
    elsewhere.mkdir()
    Image.fromarray(block_image("cat")).save(elsewhere / "m0.png")
    (cats / "more").symlink_to(elsewhere)  # a linked folder of new images: followed
    with caplog.at_level(logging.WARNING, logger="lficam"):
        data = ImageFolderDataModule(tmp_path, image_size=16)
        data.setup("fit")
    listed = [str(p) for p, _ in data.train_set.samples]
    assert len(listed) == 13 and len(set(listed)) == 13
    assert str(cats / "c0.png") in listed and str(cats / "c1.png") in listed
    assert str(cats / "more" / "m0.png") in listed
    assert not [p for p in listed if "alias" in p]
    assert [label for _, label in data.train_set.samples].count(0) == 7  # the six cats and the linked one
    assert _link_warnings(caplog) == [
        f"Followed 3 symbolic links under {tmp_path / 'train'}; 0 folders reached again (a link loop or a second "
        "path to a folder) were not walked again and 2 files reached by a second path counted once."
    ]


def test_a_symlink_loop_in_the_mask_folder_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_folder(tmp_path)
    masks = tmp_path / "masks" / "val" / "cat"
    (masks / "loop").symlink_to(masks)
    (masks / "c9.png").symlink_to(masks / "c0.png")  # a mask file shared by two stems stays (no c9 image)
    with caplog.at_level(logging.WARNING, logger="lficam"):
        data = ImageFolderDataModule(tmp_path, image_size=16, resize_size=16)
        data.setup("validate")
    assert [bool(data.val_set[i]["mask"].any()) for i in range(6)] == [True] * 6
    assert _link_warnings(caplog) == [
        f"Followed 2 symbolic links under {tmp_path / 'masks' / 'val'}; 1 folder reached again (a link loop or a "
        "second path to a folder) was not walked again and 0 files reached by a second path counted once."
    ]


# --- lossy masks -------------------------------------------------------------------------------------------


def square_mask() -> np.ndarray:
    """A 32×32 grey mask holding a drawn 15×15 square (225 object pixels) at rows 8…22, columns 9…23."""
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:23, 9:24] = 255
    return mask


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_jpeg_mask_named_png_is_binarised_at_half_range(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "mask.png"
    Image.fromarray(square_mask()).convert(mode).save(path, format="JPEG", quality=75)
    stored = np.asarray(Image.open(path).convert("RGB"))
    assert int(stored.any(axis=-1).sum()) == 241  # JPEG's ringing: "non-zero is object" counted 16 more
    mask = read_mask(path, (32, 32), "img.png")
    assert int(mask.sum()) == 225
    assert torch.equal(mask, torch.from_numpy(square_mask() > 0))


def test_lossy_webp_masks_are_binarised_and_lossless_ones_are_read_as_stored(tmp_path: Path) -> None:
    from lficam.data.masks import lossy_mask_format

    Image.fromarray(square_mask()).save(tmp_path / "lossy.webp", lossless=False, quality=50)
    Image.fromarray(square_mask()).save(tmp_path / "lossless.webp", lossless=True)
    assert lossy_mask_format(tmp_path / "lossy.webp") == "lossy WebP"
    assert lossy_mask_format(tmp_path / "lossless.webp") is None
    for name in ("lossy.webp", "lossless.webp"):
        assert int(read_mask(tmp_path / name, (32, 32), "img.png").sum()) == 225, name


def test_lossy_and_unread_mask_files_are_named_in_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_folder(tmp_path)
    masks = tmp_path / "masks" / "val" / "cat"
    top, bottom, left, right = BLOCKS["cat"]
    drawn = np.zeros((32, 64), dtype=np.uint8)
    drawn[top:bottom, left:right] = 255
    Image.fromarray(drawn).save(masks / "c0.png", format="JPEG")  # JPEG data under a PNG name
    (masks / "c1.png").unlink()
    Image.fromarray(drawn).save(masks / "c1.jpg")  # a mask saved as .jpg: read, not skipped
    (masks / "c2.npy").write_bytes(b"not an image")  # not an image format: named
    with caplog.at_level(logging.WARNING, logger="lficam"):
        data = ImageFolderDataModule(tmp_path, image_size=16, resize_size=16)
        data.setup("validate")
    messages = [r.getMessage() for r in caplog.records]
    lossy = [m for m in messages if "lossy data" in m]
    assert lossy == [
        "2 masks of the val split hold lossy data (JPEG), read as object where a pixel's value is at least 128 "
        "of 255 (half range: compression ringing below that is background), not wherever it is non-zero; save "
        f"masks as PNG to keep them exact: {masks / 'c0.png'}, {masks / 'c1.jpg'}."
    ]
    assert [m for m in messages if "not read as masks" in m] == [
        f"1 file in {tmp_path / 'masks' / 'val'} is not read as masks (masks are images: .png, .bmp, .gif, .tif, "
        f".tiff, .webp, .jpg, .jpeg): {masks / 'c2.npy'}."
    ]
    assert not [m for m in messages if "neither a mask" in m]  # c1 has its mask, as .jpg
    exact = torch.from_numpy(drawn > 0)
    for name in ("c0.png", "c1.jpg"):
        assert torch.equal(read_mask(masks / name, (64, 32), "img.png"), exact), name
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[2:6, 2:10] = (
        True  # as the palette PNG mask gives it (test_eval_masks_follow_resize_and_centre_crop)
    )
    for i in range(3):
        assert torch.equal(data.val_set[i]["mask"], expected), i


# --- boxes outside the image --------------------------------------------------------------------------------


def test_a_box_outside_the_image_is_named_once_and_leaves_the_mask_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lficam.data.boxes as boxes

    monkeypatch.setattr(boxes, "_warned", set())
    outside = tmp_path / "outside.xml"
    outside.write_text(voc([("dog", 70, 1, 80, 4)]))  # columns 70…80 of a 64 px wide image
    partly = tmp_path / "partly.xml"
    partly.write_text(voc([("dog", 1, 1, 2, 2), ("dog", 3, 40, 5, 50)]))  # the second below the 32 rows
    with caplog.at_level(logging.WARNING, logger="lficam"):
        assert not read_box_mask(outside, "dog", (64, 32), "x.jpg").any()
        assert not read_box_mask(outside, "dog", (64, 32), "x.jpg").any()  # read again: said once
        assert int(read_box_mask(partly, "dog", (64, 32), "y.jpg").sum()) == 4
    assert [r.getMessage() for r in caplog.records] == [
        f"Box file {str(outside)!r}: 1 of the 1 box it gives 'x.jpg' lies entirely outside that 64×32 image "
        "(dog (70, 1)–(80, 4)) and adds nothing to its mask: the image has no object, and the localisation "
        "metrics leave it out; check the coordinates (VOC's are 1-based pixels of the image).",
        f"Box file {str(partly)!r}: 1 of the 2 boxes it gives 'y.jpg' lies entirely outside that 64×32 image "
        "(dog (3, 40)–(5, 50)) and adds nothing to its mask; check the coordinates (VOC's are 1-based pixels "
        "of the image).",
    ]
