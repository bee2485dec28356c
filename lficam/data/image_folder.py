"""Any classification data set laid out as image folders, with optional object masks or VOC boxes.

Layout (``root`` = ``data.root``)::

    root/train/<class>/<name>.jpg      images (JPEG, PNG, BMP, WebP, TIFF, GIF; grey, palette, RGBA → RGB)
    root/val/<class>/…                 validation images (same class names as train/)
    root/test/<class>/…                optional; without it, test = val
    root/masks/<split>/<class>/<stem>.png    optional object masks: non-zero = object (lficam.data.masks);
                                             any image format is read (PNG first), lossy ones (JPEG, lossy
                                             WebP) as object at ≥ 128 of 255, with one warning per split
    root/boxes/<split>/<class>/<stem>.xml    optional Pascal VOC boxes (lficam.data.boxes)

Symbolic links are followed, but every real folder is walked once and every real image listed once (by device
and inode): a link back up the tree (a loop) or a second path to a folder or an image adds nothing, and one
warning per split says how many links were followed and what was cut. Files in the mask folder that are not
images are named in a warning.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from lficam.core.errors import UserError
from lficam.data.base import ClassificationDataModule
from lficam.data.boxes import read_box_mask
from lficam.data.decode import BadImageError, decode_rgb, looks_complete
from lficam.data.masks import lossy_mask_format, read_mask
from lficam.data.seeding import EpochSeededDataset

log = logging.getLogger("lficam")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
#: the mask formats read, in the order a stem with several mask files is resolved: lossless ones first
MASK_EXTENSIONS = (".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jpg", ".jpeg")
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


@dataclass
class LinkCounts:
    """What symbolic links (and hard links) did during folder walks: links followed, folders reached a
    second time (a link loop, or two paths to one folder) that were not walked again, and files reached by a
    second path that were listed once."""

    followed: int = 0
    folders_cut: int = 0
    files_once: int = 0

    def __bool__(self) -> bool:
        return bool(self.followed or self.folders_cut or self.files_once)

    def warn(self, where: Path | str) -> None:
        """One warning for the walks under ``where``, when links were followed or anything was cut."""
        if self:
            log.warning(
                "Followed %d symbolic link%s under %s; %d folder%s reached again (a link loop or a second path "
                "to a folder) %s not walked again and %d file%s reached by a second path counted once.",
                self.followed,
                "" if self.followed == 1 else "s",
                where,
                self.folders_cut,
                "" if self.folders_cut == 1 else "s",
                "was" if self.folders_cut == 1 else "were",
                self.files_once,
                "" if self.files_once == 1 else "s",
            )


Identity = tuple[int, int]  # (st_dev, st_ino): one real file or folder, whatever the path to it


def _identity(path: str) -> Identity | None:
    """(device, inode) of what ``path`` leads to, links followed; None when it leads nowhere (a broken link)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _files_under(
    directory: Path,
    extensions: tuple[str, ...] | None,
    *,
    unique_files: bool = True,
    counts: LinkCounts | None = None,
) -> list[str]:
    """Every file below ``directory`` with one of the extensions (any case; None: any file), sorted, hidden
    ones left out.

    Symbolic links are followed, each real folder walked once (by device and inode), so a link loop ends.
    With ``unique_files`` each real file is listed once too, under the path that reaches it through the
    fewest links (then the first in sorted order); mask and box folders keep every path (two images may
    share one mask file). ``counts`` adds up what the links did. A file reached without a link costs no
    system call beyond the folder listing (its inode comes with the listing).
    """
    counts = counts if counts is not None else LinkCounts()
    seen = {_identity(str(directory))}
    candidates: list[tuple[int, str, Identity | None]] = []  # (links on the way, path, identity)
    trees = [(str(directory), 0)]
    while trees:
        top, depth = trees.pop(0)
        for path, linked in _walk_tree(top, extensions, seen, candidates, depth, counts):
            identity = _identity(path)
            if identity is None:  # a broken link: nothing to walk
                continue
            counts.followed += 1
            if identity in seen:
                counts.folders_cut += 1
                continue
            seen.add(identity)
            trees.append((path, depth + linked))
    if not unique_files:
        return sorted(path for _, path, _ in candidates)
    kept, listed = [], set()
    for _, path, identity in sorted(candidates):
        if identity is not None and identity in listed:  # a link to a listed file, or a hard link
            counts.files_once += 1
            continue
        listed.add(identity)
        kept.append(path)
    return sorted(kept)


def _walk_tree(
    top: str,
    extensions: tuple[str, ...] | None,
    seen: set[Identity | None],
    found: list[tuple[int, str, Identity | None]],
    depth: int,
    counts: LinkCounts,
) -> list[tuple[str, int]]:
    """Add to ``found`` the wanted files below ``top`` (reached through ``depth`` links), links to files
    included (one link more, their identity from ``stat``); return the links to folders met on the way, for
    the caller to follow once every folder here is listed. A broken link to a file stays, for the decoder to
    name."""
    linked_folders: list[tuple[str, int]] = []
    pending = [top]
    while pending:
        folder = pending.pop()
        try:  # an unreadable folder is left out, as os.walk does
            device = os.stat(folder).st_dev
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            link = entry.is_symlink()
            if entry.is_dir():  # follows a link: a link to a folder is a folder here
                if link:
                    linked_folders.append((entry.path, 1))
                    continue
                identity = _identity(entry.path)  # a mount point's device is not its parent's
                if identity in seen:  # a bind mount, or a folder a link led to before: listed already
                    counts.folders_cut += 1
                    continue
                seen.add(identity)
                pending.append(entry.path)
            elif extensions is None or entry.name.lower().endswith(extensions):
                if link:
                    identity = _identity(entry.path)
                    counts.followed += identity is not None
                    found.append((depth + 1, entry.path, identity))
                else:
                    found.append((depth, entry.path, (device, entry.inode())))
    return linked_folders


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
    links = LinkCounts()
    for label, name in enumerate(classes):
        directory = folder / name
        if not directory.is_dir():
            continue
        files = _files_under(directory, EXTENSIONS, counts=links)
        if not files:
            raise UserError(
                f"Class folder {str(directory)!r} holds no images ({', '.join(EXTENSIONS)}); add images or "
                "remove the folder."
            )
        paths += files
        labels += [label] * len(files)
    links.warn(folder)
    return SampleTable(paths, labels), classes


@dataclass
class GroundTruth:
    """Per sample, as flat arrays: ``kinds`` (NO_TRUTH, MASK_FILE, BOX_FILE) and ``mask_suffixes`` (the
    index in ``suffix_names`` of its mask file's extension, as spelt on disk: ".png", ".PNG", ".jpg" …)."""

    kinds: np.ndarray
    mask_suffixes: np.ndarray
    suffix_names: tuple[str, ...] = (".png",)


def ground_truth_kinds(samples: SampleTable, split_folder: Path, masks: Path, boxes: Path) -> GroundTruth:
    """Each sample's ground truth, from one listing of the mask and box folders (links followed, loops cut,
    one warning each when links were followed); files in the mask folder that are not images of
    MASK_EXTENSIONS are named in a warning, not skipped without a word."""

    def listing(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        links = LinkCounts()
        files = _files_under(root, None, unique_files=False, counts=links)
        links.warn(root)
        return files

    mask_files, box_files = listing(masks), listing(boxes)
    with_mask: dict[str, str] = {}  # stem → its mask file's suffix, the first in MASK_EXTENSIONS it has
    other = []
    for path in mask_files:
        stem, suffix = os.path.splitext(os.path.relpath(path, masks))
        if suffix.lower() not in MASK_EXTENSIONS:
            other.append(path)
        elif stem not in with_mask or _preference(suffix) < _preference(with_mask[stem]):
            with_mask[stem] = suffix
    if other:
        log.warning(
            "%d file%s in %s %s not read as masks (masks are images: %s): %s%s.",
            len(other),
            "" if len(other) == 1 else "s",
            masks,
            "is" if len(other) == 1 else "are",
            ", ".join(MASK_EXTENSIONS),
            ", ".join(other[:_SHOWN]),
            " …" if len(other) > _SHOWN else "",
        )
    with_box = {os.path.relpath(f, boxes)[:-4] for f in box_files if f.lower().endswith(".xml")}
    kinds = np.zeros(len(samples), dtype=np.int8)
    suffixes = np.zeros(len(samples), dtype=np.int8)
    if not with_mask and not with_box:
        return GroundTruth(kinds, suffixes)
    names = tuple(sorted(set(with_mask.values()))) or (".png",)
    number = {name: i for i, name in enumerate(names)}
    for i in range(len(samples)):
        relative = os.path.splitext(os.path.relpath(samples.path(i), split_folder))[0]
        if relative in with_mask:
            kinds[i], suffixes[i] = MASK_FILE, number[with_mask[relative]]
        elif relative in with_box:
            kinds[i] = BOX_FILE
    return GroundTruth(kinds, suffixes, names)


def _preference(suffix: str) -> int:
    """Which of a stem's mask files is read: the one whose extension comes first in MASK_EXTENSIONS."""
    return MASK_EXTENSIONS.index(suffix.lower())


def mask_path(masks: Path, split_folder: Path, image: Path, suffix: str) -> Path:
    """The mask file of ``image`` (a path under ``split_folder``): its stem with ``suffix``, under ``masks``."""
    relative = image.relative_to(split_folder)
    return masks / relative.parent / (relative.stem + suffix)


def warn_lossy_masks(paths: list[Path], split: str, workers: int = 8) -> None:
    """One warning naming the masks (count and the first few) whose data is lossy, whatever their names
    say: :func:`~lficam.data.masks.read_mask` reads them as object at ≥ 128 of 255, not at any non-zero
    value, since compression ringing around the object's edge is not object."""
    # a few bytes of each file: threads overlap the waits
    with ThreadPoolExecutor(max_workers=workers) as pool:
        formats = list(pool.map(lossy_mask_format, paths, chunksize=256))
    lossy = [(p, f) for p, f in zip(paths, formats, strict=True) if f]
    if lossy:
        log.warning(
            "%d mask%s of the %s split %s lossy data (%s), read as object where a pixel's value is at least "
            "128 of 255 (half range: compression ringing below that is background), not wherever it is "
            "non-zero; save masks as PNG to keep them exact: %s%s.",
            len(lossy),
            "" if len(lossy) == 1 else "s",
            split,
            "holds" if len(lossy) == 1 else "hold",
            ", ".join(sorted({f for _, f in lossy})),
            ", ".join(str(p) for p, _ in lossy[:_SHOWN]),
            " …" if len(lossy) > _SHOWN else "",
        )


def folder_transform(
    random: bool,
    image_size: int,
    scale: tuple[float, float] | list[float],
    resize_size: int,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
) -> v2.Transform:
    """The image folder's transform of a uint8 image (and its mask): RandomResizedCrop and a flip when
    ``random``, else a resize of the short side to ``resize_size`` and a centre crop; then normalised."""
    if random:
        geometry = [
            v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


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
        mask_suffixes: np.ndarray | None = None,
        mask_suffix_names: tuple[str, ...] = (".png",),
        masks_folder: Path | None = None,
        boxes_folder: Path | None = None,
        class_names: list[str] | None = None,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(seed=seed, augment=random)
        self.samples, self.transform = samples, transform
        self.split_folder, self.kinds = split_folder, kinds
        self.mask_suffixes = mask_suffixes if mask_suffixes is not None else np.zeros(len(samples), np.int8)
        self.mask_suffix_names = mask_suffix_names
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
        if kind == MASK_FILE:
            suffix = self.mask_suffix_names[int(self.mask_suffixes[index])]
            return read_mask(mask_path(self.masks_folder, self.split_folder, path, suffix), size, path)
        relative = path.relative_to(self.split_folder).with_suffix(".xml")
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
        return folder_transform(
            train and self.augment, self.image_size, self.scale, self.resize_size, self.mean, self.std
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
        truth = ground_truth_kinds(samples, folder, masks, boxes)
        kinds = truth.kinds
        if kinds.any():
            with_mask = np.flatnonzero(kinds == MASK_FILE)
            warn_lossy_masks(
                [
                    mask_path(masks, folder, samples.path(i), truth.suffix_names[truth.mask_suffixes[i]])
                    for i in with_mask
                ],
                split,
            )
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
            mask_suffixes=truth.mask_suffixes,
            mask_suffix_names=truth.suffix_names,
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
