"""Cluttered Fashion-MNIST: the localisation benchmark on real content.

After "cluttered translated MNIST" (Mnih et al. 2014, "Recurrent Models of Visual Attention"; Jaderberg et
al. 2015 used it for spatial transformers), with garments: each canvas (``image_size``, 64 by default) holds
one labelled garment at a random position and size among ``distractors`` fragments cut from other garments
of the same split, on a noisy background; the mask is the garment's silhouette where it was placed.

Image i of a split is a pure function of (seed, split, i) and of that split's garments only: training
canvases use the training garments, validation canvases the garments carved from the training files for
validation (``val_garments`` of them, by ``seed``), test canvases the test garments.

How a canvas is made (sizes in canvas pixels, S = ``image_size``; every draw from the canvas's generator):
1. Background: i.i.d. uniform noise in [0, ``noise``].
2. ``distractors`` fragments, each a square cut from another garment (any class; the cut's side a fraction
   ``fragment_crop`` ≤ ½ of the 28 px frame, so no fragment is a whole garment, and placed within the
   garment's bounding box so it carries garment, not empty frame), resized to side ``fragment_scale``·S and
   pasted anywhere by taking the maximum with what is there.
3. The labelled garment resized to side ``scale``·S and pasted anywhere over everything, replacing the
   canvas within its silhouette (:func:`lficam.data.masks.silhouettes`, resampled nearest): that silhouette
   is the mask, so the mask covers exactly the garment's pixels.
4. Gaussian pixel noise of σ = ``noise``/3 over the whole canvas, clipped to [0, 1].

Difficulty: method.md §4.2 measured that 28 px garments on a 64 px canvas with four 12 px fragments saturate
the pointing game (0.996–1.0 at its 4.3 px tolerance, 15·64/224). The defaults make the garment smaller
(13–19 px, a fifth to a third of the side) and the fragments about as large as it (10–16 px): on the test
garments, the pixels within the tolerance of the garment are 8.9 % of the canvas (18.7 % with 28 px
garments), so a peak must find the garment among comparable clutter to score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.core.errors import UserError
from lficam.data.base import ClassificationDataModule
from lficam.data.fashion_mnist import (
    FASHION_CLASSES,
    SIZES,
    Garments,
    _triple,
    carve,
    fingerprint,
    load_garments,
    locate,
)
from lficam.data.grey import normalisation
from lficam.data.in_memory import Split, load_splits, save_splits, split_datasets
from lficam.data.masks import SILHOUETTE_THRESHOLD
from lficam.data.seeding import hash_seed, stream_id

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_FRAME = 28  # Fashion-MNIST's side
_CHUNK = 512  # canvases rendered at once: bounds memory at large sizes
_GARMENT_DRAWS = 4  # source, side, top, left: first, so the garment's place does not depend on the clutter
_FRAGMENT_DRAWS = 7  # source, cut side, cut top, cut left, placed side, top, left


@dataclass(frozen=True)
class ClutterConfig:
    """Canvas size and difficulty; fractions are of the canvas side S, ``fragment_crop`` of the 28 px frame."""

    image_size: int = 64
    distractors: int = 4
    scale: tuple[float, float] = (0.2, 0.3)
    fragment_scale: tuple[float, float] = (0.15, 0.25)
    fragment_crop: tuple[float, float] = (0.3, 0.5)
    noise: float = 0.3
    seed: int = 0

    def check(self) -> None:
        def fraction_range(name: str, low: float, high: float, top: float) -> None:
            pair = getattr(self, name)
            if len(pair) != 2 or not low < pair[0] <= pair[1] <= top:
                raise UserError(
                    f"data.{name} must be [min, max] with {low} < min ≤ max ≤ {top}, got {list(pair)}."
                )

        if not 16 <= self.image_size <= 512:
            raise UserError(f"data.image_size must be between 16 and 512 pixels, got {self.image_size}.")
        if not 0 <= self.distractors <= 64:
            raise UserError(f"data.distractors must be between 0 and 64, got {self.distractors}.")
        fraction_range("scale", 0, 1, 1)
        fraction_range("fragment_scale", 0, 1, 1)
        fraction_range("fragment_crop", 0, 1, 0.5)  # at most half the frame's side: never a whole garment
        if not 0 <= self.noise <= 1:
            raise UserError(f"data.noise must be between 0 and 1, got {self.noise}.")


def garments_needed(distractors: int) -> int:
    """The fewest garments a split's canvases can be drawn from: the labelled one, plus another for the
    fragments when there are any."""
    return 2 if distractors else 1


def check_val_garments(val_garments: int, distractors: int, training_garments: int) -> None:
    """Refuse a ``data.val_garments`` that leaves the validation or the training canvases too few garments
    (of the ``training_garments`` in Fashion-MNIST's training files, which both are carved from)."""
    need = garments_needed(distractors)
    if not need <= val_garments <= training_garments - need:
        raise UserError(
            f"data.val_garments must be between {need} and {training_garments - need} (the garments carved "
            f"from the {training_garments} training garments for the validation canvases, leaving at least "
            f"{need} for training), got {val_garments}."
        )


def _side(u: Tensor, bounds: tuple[float, float], full: int) -> Tensor:
    """A side in pixels, uniform over ``bounds``·full, at least 2 px."""
    low, high = bounds
    return ((low + (high - low) * u) * full).round().long().clamp(2, full)


def _offset(u: Tensor, room: Tensor) -> Tensor:
    """An integer uniform in 0…room."""
    return (u * (room + 1)).floor().long().clamp_max(room)


def _bounding_boxes(masks: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top, left, height, width) of each silhouette; the whole frame for an empty one."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    n = masks.shape[-1]
    empty = ~rows.any(dim=1)
    top = torch.where(empty, 0, rows.float().argmax(dim=1))
    bottom = torch.where(empty, n - 1, n - 1 - rows.flip(1).float().argmax(dim=1))
    left = torch.where(empty, 0, cols.float().argmax(dim=1))
    right = torch.where(empty, n - 1, n - 1 - cols.flip(1).float().argmax(dim=1))
    return top, left, bottom - top + 1, right - left + 1


def _draws(indices: Tensor, split: str, config: ClutterConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Per canvas: the layout's uniforms (B×K, float64), the background and the pixel noise (B×S×S)."""
    count = _GARMENT_DRAWS + _FRAGMENT_DRAWS * config.distractors
    size = config.image_size
    uniforms, background, noise = [], [], []
    for index in indices.tolist():
        seed = hash_seed(config.seed, stream_id("fashion_clutter"), SPLIT_IDS[split], index)
        generator = torch.Generator().manual_seed(seed)
        uniforms.append(torch.rand(count, generator=generator, dtype=torch.float64))
        background.append(torch.rand(size, size, generator=generator))
        noise.append(torch.randn(size, size, generator=generator))
    return torch.stack(uniforms), torch.stack(background), torch.stack(noise)


def layout(
    indices: Tensor, split: str, config: ClutterConfig, garments: Garments, uniforms: Tensor | None = None
) -> dict[str, Tensor]:
    """Where everything goes on the canvases ``indices`` of ``split``: integer tensors.

    ``garment`` (B: index into ``garments``), ``top``, ``left``, ``side`` (B: its square on the canvas);
    ``fragments``: B×D×7 (source garment, cut side, cut top, cut left, placed side, top, left).
    ``uniforms``: the canvases' layout draws when the caller has them already.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    need = garments_needed(config.distractors)
    if len(garments) < need:
        raise UserError(
            f"The {split} split has {len(garments)} garments; its canvases need at least {need} "
            f"({'fragments are cut from another garment than the labelled one' if need > 1 else 'the labelled one'})."
        )
    u = _draws(indices, split, config)[0] if uniforms is None else uniforms
    size, n = config.image_size, len(garments)
    garment = (u[:, 0] * n).floor().long().clamp_max(n - 1)
    side = _side(u[:, 1], config.scale, size)
    top, left = _offset(u[:, 2], size - side), _offset(u[:, 3], size - side)
    fragments = []
    for d in range(config.distractors):
        v = u[:, _GARMENT_DRAWS + _FRAGMENT_DRAWS * d :]
        source = (v[:, 0] * (n - 1)).floor().long().clamp_max(n - 2)
        source = source + (source >= garment).long()  # another garment than the labelled one
        cut = _side(v[:, 1], config.fragment_crop, _FRAME)
        box_top, box_left, box_h, box_w = _bounding_boxes(garments.masks[source])
        # the cut's corner uniform over the positions that keep it inside the garment's bounding box
        # (centred on the box where the box is smaller than the cut), then inside the frame
        span_h, span_w = box_h - cut, box_w - cut
        cut_top = box_top + torch.where(span_h >= 0, _offset(v[:, 2], span_h.clamp_min(0)), span_h // 2)
        cut_left = box_left + torch.where(span_w >= 0, _offset(v[:, 3], span_w.clamp_min(0)), span_w // 2)
        cut_top, cut_left = cut_top.clamp(0, _FRAME), cut_left.clamp(0, _FRAME)
        cut_top, cut_left = torch.minimum(cut_top, _FRAME - cut), torch.minimum(cut_left, _FRAME - cut)
        placed = _side(v[:, 4], config.fragment_scale, size)
        fragments.append(
            torch.stack(
                [
                    source,
                    cut,
                    cut_top,
                    cut_left,
                    placed,
                    _offset(v[:, 5], size - placed),
                    _offset(v[:, 6], size - placed),
                ],
                dim=1,
            )
        )
    stacked = (
        torch.stack(fragments, dim=1) if fragments else torch.zeros(len(indices), 0, 7, dtype=torch.long)
    )
    return {"garment": garment, "top": top, "left": left, "side": side, "fragments": stacked}


def _paste(
    sources: Tensor,
    cut: tuple[Tensor, Tensor, Tensor],
    place: tuple[Tensor, Tensor, Tensor],
    size: int,
    mode: str,
) -> Tensor:
    """B×S×S canvases holding the square ``cut`` (top, left, side in frame pixels) of each B×28×28 source
    resampled onto the square ``place`` (top, left, side in canvas pixels), zero elsewhere.

    Canvas pixel centre c + ½ maps to frame coordinate cut_top + (c + ½ − place_top)·cut_side/place_side;
    ``grid_sample`` (align_corners=False) reads frame coordinate t at normalised 2t/28 − 1.
    """
    (cut_top, cut_left, cut_side), (top, left, side) = cut, place
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    ratio = (cut_side.float() / side.float())[:, None]
    ys = cut_top[:, None].float() + (centres[None] - top[:, None].float()) * ratio  # B×S
    xs = cut_left[:, None].float() + (centres[None] - left[:, None].float()) * ratio
    grid = torch.stack(
        [
            (2 * xs / _FRAME - 1)[:, None, :].expand(-1, size, -1),
            (2 * ys / _FRAME - 1)[:, :, None].expand(-1, -1, size),
        ],
        dim=-1,
    )
    # border padding: a garment enlarged past 28 px keeps its edge pixels (the window zeroes the rest)
    sampled = F.grid_sample(
        sources[:, None].float(), grid, mode=mode, padding_mode="border", align_corners=False
    )
    out = sampled[:, 0]
    rows = (centres[None] >= top[:, None]) & (centres[None] < (top + side)[:, None])
    cols = (centres[None] >= left[:, None]) & (centres[None] < (left + side)[:, None])
    return out * (rows[:, :, None] & cols[:, None, :])


def render(
    indices: Tensor, split: str, config: ClutterConfig, garments: Garments
) -> tuple[Tensor, Tensor, Tensor]:
    """Canvases (B×S×S uint8), labels (B) and masks (B×S×S bool) of the given indices of a split."""
    uniforms, background, pixel_noise = _draws(indices, split, config)
    places = layout(indices, split, config, garments, uniforms)
    size = config.image_size
    canvas = config.noise * background
    zero = torch.zeros(len(indices), dtype=torch.long)
    for fragment in places["fragments"].unbind(dim=1):
        source, cut, cut_top, cut_left, placed, top, left = fragment.unbind(dim=1)
        layer = _paste(
            garments.images[source].float() / 255,
            (cut_top, cut_left, cut),
            (top, left, placed),
            size,
            "bilinear",
        )
        canvas = torch.maximum(canvas, layer)
    g = places["garment"]
    whole = (zero, zero, torch.full_like(zero, _FRAME))
    square = (places["top"], places["left"], places["side"])
    garment = _paste(garments.images[g].float() / 255, whole, square, size, "bilinear")
    mask = _paste(garments.masks[g].float(), whole, square, size, "nearest") > 0.5
    canvas = torch.where(mask, garment, canvas)
    canvas = (canvas + config.noise / 3 * pixel_noise).clamp(0, 1)
    return (canvas * 255).round().to(torch.uint8), garments.labels[g], mask


class FashionClutterDataModule(ClassificationDataModule):
    """Cluttered Fashion-MNIST canvases with garment masks (see the module docstring).

    root: the folder with Fashion-MNIST's four IDX files (None: Debian's ``/usr/share/datasets/fashion-mnist``).
    train_size, val_size, test_size: canvases per split; val_garments: training garments carved (by ``seed``)
        for the validation canvases.
    image_size, distractors, scale, fragment_scale, fragment_crop, noise, seed: :class:`ClutterConfig`.
    augment: flip training canvases (and masks) horizontally with probability ½, drawn from the run's seed,
        epoch and index; augment_seed: None uses the training order's seed.
    mean, std: None computes them from the training canvases.
    cache_dir: where the rendered splits are cached, keyed by the files' fingerprint and every setting.
    """

    has_masks = True

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        num_classes: int = 10,
        image_size: int = 64,
        train_size: int = 20000,
        val_size: int = 2000,
        test_size: int = 2000,
        val_garments: int = 5000,
        distractors: int = 4,
        scale: tuple[float, float] = (0.2, 0.3),
        fragment_scale: tuple[float, float] = (0.15, 0.25),
        fragment_crop: tuple[float, float] = (0.3, 0.5),
        noise: float = 0.3,
        seed: int = 0,
        augment: bool = True,
        augment_seed: int | None = None,
        threshold: int = SILHOUETTE_THRESHOLD,
        cache_dir: str | None = None,
        mean: Any = None,
        std: Any = None,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if num_classes != 10:
            raise UserError(
                f"Fashion clutter has Fashion-MNIST's 10 classes, got data.num_classes={num_classes}."
            )
        self.config = ClutterConfig(
            int(image_size),
            int(distractors),
            tuple(float(v) for v in scale),
            tuple(float(v) for v in fragment_scale),
            tuple(float(v) for v in fragment_crop),
            float(noise),
            int(seed),
        )
        self.config.check()
        self.sizes = {"train": int(train_size), "val": int(val_size), "test": int(test_size)}
        for split, count in self.sizes.items():
            if count < 1:
                raise UserError(f"data.{split}_size must be at least 1, got {count}.")
        self.root, self.val_garments, self.threshold = root, int(val_garments), int(threshold)
        # before any file is read: Fashion-MNIST's training files hold SIZES["train"] garments (a smaller
        # copy is checked again once read)
        check_val_garments(self.val_garments, self.config.distractors, SIZES["train"])
        if not 0 <= self.threshold <= 254:
            raise UserError(f"data.threshold is a grey level in 0…254, got {self.threshold}.")
        self.augment = augment
        self.augment_seed = self.shuffle_seed if augment_seed is None else int(augment_seed)
        self.cache_dir = cache_dir
        self.given_mean, self.given_std = _triple(mean, "mean"), _triple(std, "std")
        self.image_size = self.config.image_size
        self.num_classes = 10
        self.class_names = list(FASHION_CLASSES)

    def _cache_path(self) -> Path | None:
        if not self.cache_dir:
            return None
        c = asdict(self.config)
        key = "-".join(
            [
                fingerprint(locate(self.root)),
                "n{train}_{val}_{test}".format(**self.sizes),
                f"g{self.val_garments}-t{self.threshold}-s{c['image_size']}-d{c['distractors']}",
                "sc{}_{}-fs{}_{}-fc{}_{}".format(*c["scale"], *c["fragment_scale"], *c["fragment_crop"]),
                f"z{c['noise']}-seed{c['seed']}-v1",
            ]
        )
        return Path(self.cache_dir) / "fashion_clutter" / f"{key}.pt"

    def render_splits(self) -> dict[str, Split]:
        """(canvases, labels, masks) of each split, from the cache when one was written for these settings."""
        path = self._cache_path()
        cached = load_splits(path, self.config.image_size)
        if cached is not None:
            return cached
        garments = self.garments()
        splits = {}
        for split in SPLIT_IDS:
            parts = [
                render(chunk, split, self.config, garments[split])
                for chunk in torch.arange(self.sizes[split]).split(_CHUNK)
            ]
            splits[split] = tuple(torch.cat(p) for p in zip(*parts))
        save_splits(path, splits)
        return splits

    def garments(self) -> dict[str, Garments]:
        """Train, val (``val_garments`` carved from the training files by ``seed``) and test garments."""
        loaded = load_garments(self.root, self.threshold)
        check_val_garments(self.val_garments, self.config.distractors, len(loaded["train"]))
        train, val = carve(len(loaded["train"]), self.val_garments, self.config.seed)
        return {
            "train": loaded["train"].take(train),
            "val": loaded["train"].take(val),
            "test": loaded["test"],
        }

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = self.render_splits()
        self.mean, self.std = normalisation(splits["train"][0], self.given_mean, self.given_std)
        self.train_set, self.val_set, self.test_set = split_datasets(
            splits, mean=self.mean, std=self.std, seed=self.augment_seed, augment=self.augment
        )
