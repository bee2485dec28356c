"""Any classification data set laid out as image folders: ``root/train/<class>/*.jpg``, ``root/val/…``,
optionally ``root/test/…`` (ImageNet, STL-10 or Cat-vs-Dog exported to files, or the user's own).

Transforms follow the paper's ImageNet recipe (method.md §1.4): training images get RandomResizedCrop to
``image_size`` and a horizontal flip; validation and test images are resized so that their short side is
``resize_size`` (256 for 224) and centre-cropped to ``image_size``. The random draws of an image are seeded
by hash(seed, epoch, index), so a resumed run sees the same crops as an unbroken one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from lficam.data.base import ClassificationDataModule
from lficam.data.images import open_rgb
from lficam.data.seeding import EpochSeededDataset
from lficam.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def find_images(folder: Path, classes: list[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, label) of every image under ``folder/<class>/``, labels by sorted class name (or ``classes``)."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(
            f"{str(folder)!r} has class folders {unknown[:5]} that the training folder lacks; every split must "
            "use the class names of train/."
        )
    samples = []
    for label, name in enumerate(classes):
        directory = folder / name
        if directory.is_dir():
            files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
            samples += [(p, label) for p in files]
    return samples, classes


class ImageFileDataset(EpochSeededDataset):
    """Images read from disk on access, transformed with per-(seed, epoch, index) random draws."""

    def __init__(
        self, samples: list[tuple[Path, int]], transform: v2.Transform, *, seed: int = 0, random: bool = False
    ) -> None:
        super().__init__(seed=seed, augment=random)
        self.samples, self.transform, self.random = samples, transform, random

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, label = self.samples[index]
        image = open_rgb(path)
        if self.random:
            with self.seeded(index):
                tensor = self.transform(image)
        else:
            tensor = self.transform(image)
        return {"image": tensor, "label": torch.tensor(label), "index": torch.tensor(index)}


class ImageFolderDataModule(ClassificationDataModule):
    """Image folders with the ImageNet-style transforms of the paper.

    root: the folder holding ``train/`` and ``val/`` (and optionally ``test/``; without it, test = val).
    num_classes: must equal the number of class folders in ``train/`` (the model is built before the data).
    image_size: the side of the crops (224 as in the paper); resize_size: the short side before the centre
        crop at evaluation (default image_size · 256/224).
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self,
        root: str | Path,
        *,
        num_classes: int,
        image_size: int = 224,
        resize_size: int | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        augment: bool = True,
        seed: int | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if image_size < 16:
            raise UserError(f"image_size must be at least 16 pixels, got {image_size}.")
        self.root = Path(root).expanduser()
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.resize_size = int(resize_size or round(image_size * 256 / 224))
        self.scale = tuple(scale)
        self.augment = augment
        self.seed = self.shuffle_seed if seed is None else seed  # augmentation draws
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.mean, self.std = tuple(mean), tuple(std)
        self.class_names = [f"class_{i}" for i in range(self.num_classes)]

    def transforms(self, train: bool) -> v2.Transform:
        if train and self.augment:
            geometry = [
                v2.RandomResizedCrop(self.image_size, scale=self.scale, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        else:
            geometry = [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.image_size)]
        return v2.Compose(
            [
                v2.ToImage(),
                *geometry,
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(self.mean), list(self.std)),
            ]
        )

    def _folder(self, split: str, required: bool = True) -> Path | None:
        folder = self.root / self.dirs[split]
        if folder.is_dir():
            return folder
        if required:
            raise UserError(
                f"Image folder data not found: {str(folder)!r} does not exist; expected "
                f"{self.root}/{self.dirs['train']}/<class>/*.jpg and {self.root}/{self.dirs['val']}/<class>/*.jpg; "
                "set data.root=<folder> (ImageNet: extract ILSVRC2012 train and val into class folders)."
            )
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, classes = find_images(self._folder("train"))
        if len(classes) != self.num_classes:
            raise UserError(
                f"{str(self.root / self.dirs['train'])!r} has {len(classes)} class folders but "
                f"data.num_classes={self.num_classes}; set data.num_classes={len(classes)}."
            )
        if not train:
            raise UserError(
                f"No images ({', '.join(EXTENSIONS)}) under {str(self.root / self.dirs['train'])!r}."
            )
        self.class_names = classes
        val, _ = find_images(self._folder("val"), classes)
        test_folder = self._folder("test", required=False)
        test = find_images(test_folder, classes)[0] if test_folder else val
        self.train_set = ImageFileDataset(train, self.transforms(True), seed=self.seed, random=self.augment)
        self.val_set = ImageFileDataset(val, self.transforms(False))
        self.test_set = ImageFileDataset(test, self.transforms(False))
