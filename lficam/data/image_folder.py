"""Any classification data set laid out as image folders, with optional object masks or VOC boxes.

Layout (``root`` = ``data.root``)::

    root/train/<class>/<name>.jpg      images (JPEG, PNG, BMP, WebP, TIFF, GIF; grey, palette, RGBA → RGB)
    root/val/<class>/…                 validation images (same class names as train/)
    root/test/<class>/…                optional; without it, test = val
    root/masks/<split>/<class>/<stem>.png    optional object masks: non-zero = object (lficam.data.masks)
    root/boxes/<split>/<class>/<stem>.xml    optional Pascal VOC boxes (lficam.data.boxes)

Ground truth: a split has it when any of its images has a mask or a box file (a mask wins over a box file
for the same image). Its batches then carry ``mask`` and every localisation metric runs; an image of that
split without either file gets an empty mask, which the metrics leave out (NaN, never a hit), and one
warning counts such images. A split with neither folder carries no ``mask`` and no localisation metric runs.

Transforms follow the paper's ImageNet recipe (method.md §1.4): training images get RandomResizedCrop to
``image_size`` and a horizontal flip, validation and test images a resize of the short side to
``resize_size`` (256 for 224) and a centre crop; masks go through the same geometry (torchvision's
``tv_tensors.Mask``, nearest-neighbour resampling) so they stay on the object. The random draws of an image
come from hash(seed, "crop", epoch, index), so a resumed run sees the crops an unbroken run saw.

Scale: the folders are listed once per run (in ``setup``), into flat arrays (one byte buffer of UTF-8 paths,
offsets and labels) that workers inherit without the per-object reference counts that make a list of a
million paths grow in every worker; images are decoded on access by :mod:`lficam.data.decode`.
Nothing in a data folder is unpickled or executed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from lficam.data.base import ClassificationDataModule
from lficam.data.boxes import read_box_mask
from lficam.data.decode import BadImageError, decode_rgb, looks_complete
from lficam.data.masks import read_mask
from lficam.data.seeding import EpochSeededDataset
from lficam.errors import UserError

log = logging.getLogger("lficam")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
NO_TRUTH, MASK_FILE, BOX_FILE = 0, 1, 2
_SHOWN = 5  # paths named in a warning


class SampleTable:
    """(path, label) pairs in flat numpy arrays: UTF-8 bytes of all paths, their offsets, the labels.

    Indexing gives ``(Path, int)``; nothing per sample is a Python object, so forked or spawned workers
    share (or copy once) three arrays instead of touching a million objects' reference counts.
    """

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        raw = self.buffer[self.offsets[index] : self.offsets[index + 1]].tobytes()
        return Path(raw.decode("utf-8", "surrogateescape"))

    def __getitem__(self, index: int) -> tuple[Path, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.path(index), int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[Path, int]]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SampleTable) and list(self) == list(other)

    def subset(self, keep: np.ndarray) -> SampleTable:
        indices = np.flatnonzero(keep)
        return SampleTable([str(self.path(i)) for i in indices], self.labels[indices].tolist())


def _files_under(directory: Path, extensions: tuple[str, ...]) -> list[str]:
    """Every file below ``directory`` with one of the extensions (any case), sorted, hidden ones left out."""
    found = []
    for folder, subfolders, files in os.walk(directory, followlinks=True):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        found += [
            os.path.join(folder, f) for f in files if not f.startswith(".") and f.lower().endswith(extensions)
        ]
    return sorted(found)


def class_folders(folder: Path) -> list[str]:
    """The sorted names of the class folders in a split folder."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def find_images(folder: Path, classes: list[str] | None = None) -> tuple[SampleTable, list[str]]:
    """(path, label) of every image under ``folder/<class>/``, labels by sorted class name (or ``classes``).

    Refuses class folders unknown to ``classes`` and class folders without images, naming them.
    """
    found = class_folders(folder)
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(
            f"{str(folder)!r} has class folders {unknown[:5]} that the training folder lacks; every split must "
            "use the class names of train/."
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        directory = folder / name
        if not directory.is_dir():
            continue
        files = _files_under(directory, EXTENSIONS)
        if not files:
            raise UserError(
                f"Class folder {str(directory)!r} holds no images ({', '.join(EXTENSIONS)}); add images or "
                "remove the folder."
            )
        paths += files
        labels += [label] * len(files)
    return SampleTable(paths, labels), classes


def ground_truth_kinds(samples: SampleTable, split_folder: Path, masks: Path, boxes: Path) -> np.ndarray:
    """For each sample: MASK_FILE, BOX_FILE or NO_TRUTH, from one listing of the mask and box folders."""

    def stems(root: Path, extension: str) -> set[str]:
        if not root.is_dir():
            return set()
        return {os.path.relpath(f, root)[: -len(extension)] for f in _files_under(root, (extension,))}

    with_mask, with_box = stems(masks, ".png"), stems(boxes, ".xml")
    kinds = np.zeros(len(samples), dtype=np.int8)
    if not with_mask and not with_box:
        return kinds
    for i in range(len(samples)):
        relative = os.path.splitext(os.path.relpath(samples.path(i), split_folder))[0]
        kinds[i] = MASK_FILE if relative in with_mask else (BOX_FILE if relative in with_box else NO_TRUTH)
    return kinds


class ImageFileDataset(EpochSeededDataset):
    """Images (and, where the split has ground truth, their masks) read from disk on access.

    ``kinds`` (per sample: NO_TRUTH, MASK_FILE, BOX_FILE) is None for a split without ground truth: items
    then carry no ``mask``. With ``skip_bad`` an image that cannot be decoded is replaced by the next
    readable one (each such path is logged once per process) instead of stopping the run.
    """

    stream = "crop"

    def __init__(
        self,
        samples: SampleTable,
        transform: v2.Transform,
        *,
        seed: int = 0,
        random: bool = False,
        split_folder: Path | None = None,
        kinds: np.ndarray | None = None,
        masks_folder: Path | None = None,
        boxes_folder: Path | None = None,
        class_names: list[str] | None = None,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(seed=seed, augment=random)
        self.samples, self.transform = samples, transform
        self.split_folder, self.kinds = split_folder, kinds
        self.masks_folder, self.boxes_folder = masks_folder, boxes_folder
        self.class_names = class_names or []
        self.skip_bad = skip_bad
        self._skipped: set[str] = set()

    @property
    def random(self) -> bool:
        return self.augment

    @property
    def has_masks(self) -> bool:
        return self.kinds is not None

    def __len__(self) -> int:
        return len(self.samples)

    def _mask(self, index: int, path: Path, label: int, size: tuple[int, int]) -> Tensor:
        """H×W booleans of sample ``index`` from its mask or box file; empty when it has neither."""
        kind = int(self.kinds[index])
        if kind == NO_TRUTH:
            return torch.zeros(size[1], size[0], dtype=torch.bool)
        relative = path.relative_to(self.split_folder).with_suffix(".png" if kind == MASK_FILE else ".xml")
        if kind == MASK_FILE:
            return read_mask(self.masks_folder / relative, size, path)
        return read_box_mask(self.boxes_folder / relative, self.class_names[label], size, path)

    def load(self, index: int) -> dict[str, Tensor]:
        path, label = self.samples[index]
        image = decode_rgb(path)
        inputs: tuple[Any, ...] = (tv_tensors.Image(image),)
        if self.has_masks:
            mask = self._mask(index, path, label, (image.shape[-1], image.shape[-2]))
            inputs += (tv_tensors.Mask(mask[None].to(torch.uint8)),)
        if self.augment:
            with self.seeded(index):
                outputs = self.transform(*inputs)
        else:
            outputs = self.transform(*inputs)
        item = {"image": outputs[0] if self.has_masks else outputs, "label": torch.tensor(label)}
        if self.has_masks:
            item["mask"] = outputs[1][0].bool()
        item["index"] = torch.tensor(index)
        return item

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not self.skip_bad:
            return self.load(index)
        for attempt in range(min(len(self), 64)):
            candidate = (index + attempt) % len(self)
            try:
                item = self.load(candidate)
            except BadImageError as error:
                if error.path not in self._skipped:
                    self._skipped.add(error.path)
                    log.warning(
                        "Skipping unreadable image %s (replaced by the next readable one).", error.path
                    )
                continue
            item["index"] = torch.tensor(index)
            return item
        raise UserError(
            f"64 images in a row from {str(self.samples.path(index))!r} on cannot be read; check the data folder."
        )


def drop_unreadable(samples: SampleTable, split: str, workers: int = 8) -> SampleTable:
    """The samples whose files pass :func:`~lficam.data.decode.looks_complete`, with one warning giving the
    count and the first few paths of the others (``data.skip_bad_images``)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:  # file reads: threads overlap the waits
        reasons = list(
            pool.map(looks_complete, (samples.path(i) for i in range(len(samples))), chunksize=256)
        )
    bad = [i for i, r in enumerate(reasons) if r is not None]
    if not bad:
        return samples
    shown = ", ".join(str(samples.path(i)) for i in bad[:_SHOWN])
    log.warning(
        "Skipping %d unreadable image%s of the %s split (data.skip_bad_images=true): %s%s.",
        len(bad),
        "" if len(bad) == 1 else "s",
        split,
        shown,
        " …" if len(bad) > _SHOWN else "",
    )
    keep = np.ones(len(samples), dtype=bool)
    keep[bad] = False
    if not keep.any():
        raise UserError(f"No readable image is left in the {split} split after skipping {len(bad)}.")
    return samples.subset(keep)


class ImageFolderDataModule(ClassificationDataModule):
    """Image folders with the ImageNet-style transforms of the paper and optional masks or boxes.

    root: the folder holding ``train/`` and ``val/`` (and optionally ``test/``, ``masks/``, ``boxes/``).
    num_classes: the number of class folders in ``train/``; None reads it from there (``train.py`` then
        builds the model with it).
    image_size: the side of the crops (224 as in the paper); resize_size: the short side before the centre
        crop at evaluation (default image_size · 256/224).
    seed: the augmentation's seed (None: the training order's, drawn from the run's seeded random state).
    skip_bad_images: check every image's header and end marker when listing and skip the unreadable ones
        with one warning per split; images that still fail to decode are replaced by the next readable one.
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self,
        root: str | Path,
        *,
        num_classes: int | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        augment: bool = True,
        seed: int | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        masks_dir: str = "masks",
        boxes_dir: str = "boxes",
        skip_bad_images: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if image_size < 16:
            raise UserError(f"image_size must be at least 16 pixels, got {image_size}.")
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.resize_size = int(resize_size or round(image_size * 256 / 224))
        self.scale = tuple(scale)
        self.augment = augment
        self.seed = self.shuffle_seed if seed is None else seed  # augmentation draws
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.masks_root, self.boxes_root = self.root / masks_dir, self.root / boxes_dir
        self.skip_bad_images = bool(skip_bad_images)
        self.mean, self.std = tuple(mean), tuple(std)
        if num_classes is None:  # read from the folder now: the model is built from it before setup
            num_classes = len(class_folders(self._folder("train")))
            if num_classes == 0:
                raise UserError(
                    f"{str(self._folder('train'))!r} holds no class folders; expected {self.root}/"
                    f"{train_dir}/<class>/<image>."
                )
        self.num_classes = int(num_classes)
        self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        self._classes: list[str] | None = None

    @property
    def has_masks(self) -> bool:  # known once the splits are listed
        sets = [s for s in (self.train_set, self.val_set, self.test_set) if s is not None]
        return any(getattr(s, "has_masks", False) for s in sets)

    def transforms(self, train: bool) -> v2.Transform:
        if train and self.augment:
            geometry = [
                v2.RandomResizedCrop(self.image_size, scale=self.scale, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        else:
            geometry = [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.image_size)]
        return v2.Compose(
            [*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        )

    def _folder(self, split: str, required: bool = True) -> Path | None:
        folder = self.root / self.dirs[split]
        if folder.is_dir():
            return folder
        if required:
            raise UserError(
                f"Image folder data not found: {str(folder)!r} does not exist; expected "
                f"{self.root}/{self.dirs['train']}/<class>/*.jpg and {self.root}/{self.dirs['val']}/<class>/*.jpg "
                f"(optionally {self.dirs['test']}/, masks/<split>/<class>/<stem>.png, boxes/<split>/<class>/"
                "<stem>.xml); set data.root=<folder> (ImageNet: extract ILSVRC2012 train and val into class folders)."
            )
        return None

    def classes(self) -> list[str]:
        if self._classes is None:
            classes = class_folders(self._folder("train"))
            if len(classes) != self.num_classes:
                raise UserError(
                    f"{str(self.root / self.dirs['train'])!r} has {len(classes)} class folders but "
                    f"data.num_classes={self.num_classes}; set data.num_classes={len(classes)} (or null to read it)."
                )
            self._classes = self.class_names = classes
        return self._classes

    def _split(self, split: str, folder: Path, train: bool) -> ImageFileDataset:
        samples, _ = find_images(folder, self.classes())
        if not len(samples):
            raise UserError(f"No images ({', '.join(EXTENSIONS)}) under {str(folder)!r}.")
        if self.skip_bad_images:
            samples = drop_unreadable(samples, split)
        name = folder.name
        masks, boxes = self.masks_root / name, self.boxes_root / name
        kinds = ground_truth_kinds(samples, folder, masks, boxes)
        if kinds.any():
            missing = np.flatnonzero(kinds == NO_TRUTH)
            if len(missing):
                shown = ", ".join(str(samples.path(i)) for i in missing[:_SHOWN])
                log.warning(
                    "%d of the %d %s images have neither a mask in %s nor a box file in %s; they get an empty "
                    "mask, which the localisation metrics leave out: %s%s.",
                    len(missing),
                    len(samples),
                    split,
                    masks,
                    boxes,
                    shown,
                    " …" if len(missing) > _SHOWN else "",
                )
        return ImageFileDataset(
            samples,
            self.transforms(train),
            seed=self.seed,
            random=train and self.augment,
            split_folder=folder,
            kinds=kinds if kinds.any() else None,
            masks_folder=masks,
            boxes_folder=boxes,
            class_names=self.classes(),
            skip_bad=self.skip_bad_images,
        )

    def setup(self, stage: str | None = None) -> None:
        """List the splits the stage needs, each once per run (a later stage reuses them)."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._split("train", self._folder("train"), train=True)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._split("val", self._folder("val"), train=False)
        if stage in (None, "test", "predict") and self.test_set is None:
            test_folder = self._folder("test", required=False)
            if test_folder is None:  # test = val
                if self.val_set is None:
                    self.val_set = self._split("val", self._folder("val"), train=False)
                self.test_set = self.val_set
            else:
                self.test_set = self._split("test", test_folder, train=False)
