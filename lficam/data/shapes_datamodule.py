"""The synthetic shapes data set as a Dataset and a LightningDataModule (the default data)."""

from __future__ import annotations

from pathlib import Path

import torch

from lficam.core.errors import UserError
from lficam.data.base import ClassificationDataModule
from lficam.data.in_memory import MaskedImageDataset, Split, load_cache, save_cache
from lficam.data.shapes import SHAPES, ShapesConfig, render

_CHUNK = 512  # images rendered at once: bounds memory at large image sizes


#: One split of the synthetic shapes: 3×S×S uint8 images and masks in memory, flipped when augmented.
ShapesDataset = MaskedImageDataset


class ShapesDataModule(ClassificationDataModule):
    """Synthetic shapes (design.md §4): deterministic per (seed, split, index), with object masks.

    ``seed`` (``data.seed``) fixes the images; the flips of training images follow the run's seed
    (``shuffle_seed``), like the training order.

    The rendered splits are cached in ``cache_dir`` (when given) as tensor-only files keyed by every
    parameter, so a second run starts at once.
    """

    has_masks = True

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_classes: int = 10,
        train_size: int = 8000,
        val_size: int = 1000,
        test_size: int = 1000,
        object_scale: tuple[float, float] = (0.2, 0.32),
        clutter: int = 4,
        noise: float = 0.5,
        seed: int = 0,
        augment: bool = True,
        cache_dir: str | None = None,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        **loader_options: object,
    ) -> None:
        super().__init__(**loader_options)
        if not 2 <= num_classes <= len(SHAPES):
            raise UserError(f"Shapes has 2 to {len(SHAPES)} classes, got num_classes={num_classes}.")
        if not 16 <= image_size <= 512:
            raise UserError(f"Shapes image_size must be between 16 and 512 pixels, got {image_size}.")
        self.config = ShapesConfig(image_size, num_classes, tuple(object_scale), clutter, noise, seed)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.num_classes = num_classes
        self.class_names = list(SHAPES[:num_classes])
        self.augment = augment
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.mean, self.std = tuple(mean), tuple(std)

    def _cache_path(self, split: str) -> Path | None:
        if self.cache_dir is None:
            return None
        c = self.config
        key = f"{split}-n{self.sizes[split]}-s{c.image_size}-k{c.num_classes}-o{c.object_scale[0]}_{c.object_scale[1]}"
        key += f"-c{c.clutter}-z{c.noise}-seed{c.seed}-v1"
        return self.cache_dir / "shapes" / f"{key}.pt"

    def render_split(self, split: str) -> Split:
        path = self._cache_path(split)
        cached = load_cache(path)
        if cached is not None:
            return cached["images"], cached["labels"], cached["masks"]
        parts = [render(idx, split, self.config) for idx in torch.arange(self.sizes[split]).split(_CHUNK)]
        images, labels, masks = (torch.cat(p) for p in zip(*parts))
        save_cache(path, {"images": images, "labels": labels, "masks": masks})
        return images, labels, masks

    def _dataset(self, split: str, augment: bool) -> MaskedImageDataset:
        images, labels, masks = self.render_split(split)
        return MaskedImageDataset(
            images, labels, masks, mean=self.mean, std=self.std, augment=augment, seed=self.shuffle_seed
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset("train", self.augment)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset("val", False)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset("test", False)
