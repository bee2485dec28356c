"""Explain a trained model on your own images from the command line.

    python -m lficam.explain ckpt_path=<run>/checkpoints/best.ckpt images=[a.jpg,b.png] methods=[own,gradcam,scorecam]

Loads a checkpoint written by ``python train.py``, reads the images with PIL, resizes them to the
training image size, normalises them as the training data were, and writes one picture per image: the
image, the model's own attention map (``own``) and each post-hoc CAM side by side, with the predicted class
and its probability in the title. Options and their defaults: ``conf/explain.yaml`` (shipped in the package as
``lficam.conf``); ``lficam-explain`` is the same command. The output folder is printed at the end. A user's
mistake (a missing image, an unknown method, a checkpoint that is not ours, an image larger than
``max_image_pixels``) ends with one sentence and exit code 2 (:mod:`lficam.cli.runtime`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lficam import cams
from lficam.checkpoints.loading import load
from lficam.core.devices import choose_device
from lficam.core.errors import UnknownNameError, UserError, os_error_reason
from lficam.core.pictures import save_side_by_side
from lficam.data.base import normalize
from lficam.evaluation.pairs import explain_pairs
from lficam.evaluation.prototypes import fam_setup

OWN = "own"
# What a checkpoint that carries no data settings gets: the synthetic shapes' normalisation.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)
DEFAULT_SIZE = {"cifar": 32, "imagenet": 224}
# PIL's own guard against decompression bombs (Image.MAX_IMAGE_PIXELS), the default of max_image_pixels
MAX_IMAGE_PIXELS = 89_478_485


def _as_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if OmegaConf.is_list(value) or isinstance(value, list | tuple):
        return [str(v) for v in value]
    raise UserError(f"{key} must be a list like {key}=[a,b], got {value!r}.")


def check_methods(methods: list[str]) -> list[str]:
    if not methods:
        raise UserError("No methods given: add for example methods=[own,gradcam].")
    for name in methods:
        if name != OWN:
            try:
                cams.method_name(name)
            except UnknownNameError:
                raise UnknownNameError("method", name, [OWN, *cams.available()]) from None
    return methods


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a training checkpoint or safetensors export (eval mode) and the input settings it
    carries (image_size, mean, std, class_names), through :func:`lficam.load` (no pickled code runs)."""
    net = load(path)
    metadata = getattr(net, "lficam_metadata", {})
    stored = {k: v for k, v in (metadata.get("input") or {}).items() if v is not None}
    if metadata.get("class_names"):
        stored["class_names"] = metadata["class_names"]
    return net, stored


def read_images(paths: list[str], size: int, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Tensor:
    """N×3×size×size in [0, 1]: each file read with PIL, converted to RGB and resized (bilinear) to a square.

    A file whose header declares more than ``max_pixels`` pixels (None: no limit) is refused before it is
    decoded: a small PNG can unpack into gigabytes.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not paths:
        raise UserError("No images given: add images=[a.jpg,b.png].")
    tensors = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise UserError(
                f"Image {name!r} does not exist: check the path (relative paths start at {Path.cwd()})."
            )
        try:
            with _pil_pixel_guard_off(), Image.open(path) as image:
                _check_pixels(name, image.size, max_pixels)
                rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        except UserError:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise UserError(
                f"Image {name!r} cannot be read as a picture ({type(error).__name__}): give a PNG or JPEG file."
            ) from None
        tensors.append(torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(tensors).float() / 255


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise UserError(
            f"Image {name!r} has {width}×{height} = {width * height:,} pixels, more than "
            f"max_image_pixels={max_pixels} (a guard against decompression bombs): if you trust the file, raise "
            f"the limit, e.g. max_image_pixels={width * height}, or lift it with max_image_pixels=null."
        )


@contextmanager
def _pil_pixel_guard_off() -> Iterator[None]:
    """PIL's own check (a warning above its limit, DecompressionBombError above twice that) off while
    :func:`_check_pixels` applies ours, which says how to lift it."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _max_pixels(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"max_image_pixels must be a positive whole number or null, got {value!r}.")
    return value


def _triple(value: Any, key: str) -> tuple[float, float, float]:
    values = [
        float(v) for v in (value if isinstance(value, list | tuple) or OmegaConf.is_list(value) else [value])
    ]
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or (key == "std" and min(values) <= 0):
        raise UserError(
            f"{key} must be one number or three (R, G, B){' above 0' if key == 'std' else ''}, got {value!r}."
        )
    return (values[0], values[1], values[2])


def explain(cfg: DictConfig) -> Path:
    """Write the pictures; returns the output folder."""
    methods = check_methods(_as_list(cfg.methods, "methods"))
    image_paths = _as_list(cfg.images, "images")
    net, stored = load_checkpoint(cfg.ckpt_path)
    family = getattr(getattr(net, "backbone", None), "family", "imagenet")
    size = cfg.image_size or stored.get("image_size") or DEFAULT_SIZE.get(family, 224)
    if not isinstance(size, int) or size < 8:
        raise UserError(f"image_size must be a whole number of pixels of at least 8, got {size!r}.")
    mean = _triple(cfg.mean if cfg.mean is not None else stored.get("mean", DEFAULT_MEAN), "mean")
    std = _triple(cfg.std if cfg.std is not None else stored.get("std", DEFAULT_STD), "std")
    images = read_images(image_paths, size, _max_pixels(cfg.get("max_image_pixels", MAX_IMAGE_PIXELS)))

    device = choose_device(str(cfg.device))
    net = net.to(device)
    x = normalize(images, mean, std).to(device)
    with torch.no_grad():
        output = net(x)
    logits = cams.logits_of(output)
    probs = logits.float().softmax(dim=1)
    predicted = probs.argmax(dim=1)
    class_names = _as_list(cfg.class_names, "class_names") or [str(c) for c in stored.get("class_names", [])]
    if class_names and len(class_names) != probs.shape[1]:
        raise UserError(
            f"class_names has {len(class_names)} names but the model has {probs.shape[1]} classes."
        )

    references = _as_list(cfg.get("reference"), "reference")  # FAM on pairs: lficam/evaluation/pairs.py
    paired = [m for m in methods if m != OWN and cams.method_name(m) == "fam"] if references else []
    if references and not paired:
        raise UserError("reference= is FAM's second image: add fam to methods, e.g. methods=[fam].")

    maps = method_maps(net, x, output, predicted, [m for m in methods if m not in paired], cfg)

    out_dir = Path(cfg.output_dir or Path("outputs", "explain", datetime.now().strftime("%Y-%m-%d_%H-%M-%S")))
    if paired:
        explain_pairs(
            net,
            x,
            images,
            image_paths,
            references,
            read_images=lambda paths: read_images(paths, size),
            normalize=lambda t: normalize(t, mean, std),
            out_dir=out_dir,
            similarity=str(cfg.fam.similarity),
            target_layer=cfg.target_layer,
        )
    if maps or not paired:
        write_pictures(out_dir, image_paths, images, maps, probs, class_names)
    return out_dir


def method_maps(
    net: nn.Module, x: Tensor, output: Any, predicted: Tensor, methods: list[str], cfg: DictConfig
) -> dict[str, Tensor]:
    """Each method's map of the predicted class: ``own`` is the model's attention at its feature
    resolution (as the forward pass gave it); a CAM is computed at the image's size."""
    maps: dict[str, Tensor] = {}
    for name in methods:
        if name == OWN:
            attention = getattr(output, "attention", None)
            if attention is None:
                raise UserError("This model has no attention map of its own: leave `own` out of methods.")
            maps[OWN] = attention.float()
            continue
        options: dict[str, Any] = {}
        if cams.method_name(name) == "scorecam":
            options = {"batch_size": int(cfg.scorecam_batch_size)}
        elif (
            cams.method_name(name) == "fam"
        ):  # the FC row or class prototypes: lficam/evaluation/prototypes.py
            options = fam_setup(net, cfg.fam, ckpt_path=cfg.ckpt_path, target_layer=cfg.target_layer).options
        maps[name] = cams.create(name, net, cfg.target_layer, **options)(x, predicted)
    return maps


def write_pictures(
    out_dir: Path,
    image_paths: list[str],
    images: Tensor,
    maps: dict[str, Tensor],
    probs: Tensor,
    class_names: list[str],
) -> None:
    """One ``<stem>.png`` per image (``<stem>_<i>.png`` when two images share a stem): the image and each
    map side by side, titled with the predicted class and its probability."""
    used: set[str] = set()
    for i, name in enumerate(image_paths):
        stem = Path(name).stem
        file = f"{stem}.png" if stem not in used else f"{stem}_{i}.png"
        used.add(stem)
        c = int(probs[i].argmax())
        label = class_names[c] if class_names else f"class {c}"
        title = f"{Path(name).name}: {label} ({probs[i, c]:.2f})"
        try:
            save_side_by_side(out_dir / file, images[i], {k: v[i].cpu() for k, v in maps.items()}, title)
        except OSError as error:
            raise UserError(
                f"Cannot write the pictures into output_dir={str(out_dir)!r} ({os_error_reason(error)}): "
                "choose a folder you can write."
            ) from None


def run_explain(cfg: DictConfig) -> Path:
    """Hydra task body of ``python -m lficam.explain`` / ``lficam-explain``: write the pictures, print the folder."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError(
            "No checkpoint given: add ckpt_path=<run>/checkpoints/<name>.ckpt (written by python train.py)."
        )
    out_dir = explain(cfg)
    print(out_dir)
    return out_dir
