"""What the explorer page shows, without the page: a run's model and test images, maps, per-image scores.

Everything here is plain Python over :mod:`lficam.evaluation` (the one home of maps and scores), so the
numbers on screen are those of ``eval.py`` for the same image, and the page (:mod:`lficam.app.page`) only lays
them out. An :class:`Explorer` loads its checkpoint once and caches every map it computes, keyed by the image
and the method: choosing another method or coming back to an image costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lficam import cams
from lficam.checkpoints.loading import load
from lficam.checkpoints.records import best_checkpoint, find_checkpoints, recorded_data_config
from lficam.core.errors import UserError
from lficam.core.pictures import save_side_by_side
from lficam.data.base import normalize
from lficam.data.decode import BadImageError, decode_rgb_data
from lficam.evaluation.cross_run import similarity_matrices
from lficam.evaluation.images import Probe, build_test_data
from lficam.evaluation.maps import OWN, map_fn
from lficam.evaluation.protocol import Protocol
from lficam.evaluation.prototypes import dataset_labels, fam_setup
from lficam.evaluation.scores import MapScores, score_maps
from lficam.metrics.stability import PAPER_THRESHOLD

log = logging.getLogger("lficam")

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".st")
#: the post-hoc CAMs the page offers beside the own map (FAM has its own panel: it needs a reference)
PAGE_METHODS = ("cam", "gradcam", "gradcampp", "scorecam", "abscam", "layercam", "eigencam")
#: an upload larger than this is refused before it is decoded (the decoder also caps the pixel count)
MAX_UPLOAD_BYTES = 20 * 2**20
#: per-image scores: the deletion and insertion curves in 16 steps, no ROAD and no input stability (both
#: are means over many perturbed copies, for eval.py's tables, not a quick look at one image)
ONE_IMAGE = Protocol(name="one image", num_images=1, curve_steps=16, road=False, stability=False)


@dataclass
class Target:
    """What ``lficam-app <path>`` was opened on: one checkpoint, a run folder or a sweep folder of runs.

    ``checkpoints``: the file of each run (a run folder's best checkpoint, as eval.py chooses it); ``names``:
    how the page names them (the run folder relative to the sweep folder)."""

    path: Path
    kind: str
    checkpoints: list[Path]
    names: list[str]


def resolve_target(path: str | Path) -> Target:
    """The checkpoints behind ``path``; a :class:`UserError` naming the path when it holds none."""
    path = Path(str(path)).expanduser()
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise UserError(
                f"{str(path)!r} is not a checkpoint: open a .ckpt or .safetensors file, a run folder or a "
                "sweep folder."
            )
        return Target(path, "checkpoint", [path], [path.name])
    if not path.is_dir():
        raise UserError(f"{str(path)!r} does not exist: give a checkpoint, a run folder or a sweep folder.")
    if (path / "checkpoints").is_dir() or (path / "summary.json").is_file():
        return Target(path, "run", [best_checkpoint(path)], [path.name])
    found = find_checkpoints(path)
    if not found:
        raise UserError(
            f"{str(path)!r} holds no run with checkpoints/: open a run folder of train.py, a sweep folder of "
            "them, or a checkpoint file."
        )
    names = [_run_name(ckpt, path) for ckpt in found]
    return Target(path, "sweep" if len(found) > 1 else "run", found, names)


def _run_name(checkpoint: Path, sweep: Path) -> str:
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    try:
        return run.relative_to(sweep).as_posix() or run.name
    except ValueError:
        return run.name


@dataclass
class Sample:
    """One image as the model sees it (``image``: 3×H×W, normalised) and as a picture (``display``: in [0, 1]),
    with its true ``label`` and object ``mask`` (H×W) where known; ``key`` names it in the map cache."""

    key: str
    image: Tensor
    display: Tensor
    label: int | None = None
    mask: Tensor | None = None


@dataclass
class Prediction:
    label: int
    name: str
    probability: float


@dataclass
class ImageScores:
    """The per-image scores of one map (:func:`lficam.evaluation.scores.score_maps` on one image)."""

    values: dict[str, float]
    curves: dict[str, Tensor] = field(default_factory=dict)


class Explorer:
    """One checkpoint, loaded once, its test split, and every map computed so far."""

    def __init__(self, checkpoint: str | Path, *, data_dir: str | None = None, device: str = "cpu") -> None:
        self.checkpoint = Path(checkpoint)
        self.device = torch.device(device)
        self.model = load(self.checkpoint, map_location=self.device).eval()
        metadata = getattr(self.model, "lficam_metadata", {})
        inputs = metadata.get("input") or {}
        self.model_config: dict[str, Any] = metadata.get("model_config") or {}
        self.num_classes = int(self.model_config.get("num_classes") or 0)
        self.image_size = int(inputs.get("image_size") or 224)
        self.mean = tuple(inputs.get("mean") or (0.5, 0.5, 0.5))
        self.std = tuple(inputs.get("std") or (0.25, 0.25, 0.25))
        names = metadata.get("class_names") or inputs.get("class_names")
        self.class_names = [str(n) for n in names] if names else [str(i) for i in range(self.num_classes)]
        self.data_config = (
            recorded_data_config(self.checkpoint) if self.checkpoint.suffix == ".ckpt" else None
        )
        self.data_dir = data_dir
        self._test_set: Any = None
        self._maps: OrderedDict[tuple[str, str, str], Tensor] = OrderedDict()
        self._fam_options: dict[str, Any] | None = None
        self.fam_description = ""

    # --- images -------------------------------------------------------------------------------------------
    @property
    def test_set(self) -> Any:
        """The checkpoint's test split (built on first use), or None for an export that records no data."""
        if self._test_set is None and self.data_config is not None:
            self._datamodule = build_test_data(self.data_config, self.data_dir)
            self._test_set = self._datamodule.test_set
        return self._test_set

    def test_labels(self) -> Tensor | None:
        """The class of every test image (read once; the page filters by it)."""
        if not hasattr(self, "_labels"):
            self._labels = dataset_labels(self.test_set) if self.test_set is not None else None
        return self._labels

    def test_image(self, index: int) -> Sample:
        """Test image ``index``, with its label and mask."""
        item = self.test_set[index]
        image = item["image"].float()
        denormalize = getattr(self._datamodule, "denormalize", lambda t: t.clamp(0, 1))
        mask = item.get("mask")
        return Sample(
            key=f"test:{index}",
            image=image,
            display=denormalize(image.unsqueeze(0))[0],
            label=int(item["label"]),
            mask=mask.float() if mask is not None else None,
        )

    def upload(self, name: str, data: bytes) -> Sample:
        """An uploaded image file, through the project's guarded decoder, resized and normalised like the
        training images; one sentence naming the file when it cannot be used."""
        if len(data) > MAX_UPLOAD_BYTES:
            raise UserError(
                f"{name!r} is {len(data) / 2**20:.1f} MiB, more than the {MAX_UPLOAD_BYTES // 2**20} MiB an "
                "upload may be: upload a smaller image."
            )
        try:
            pixels = decode_rgb_data(name, data)
        except BadImageError as error:
            raise UserError(
                f"Cannot read the upload {name!r} ({error.reason}): upload a PNG or JPEG image."
            ) from None
        display = F.interpolate(
            pixels.unsqueeze(0).float() / 255, size=(self.image_size,) * 2, mode="bilinear", antialias=True
        )[0].clamp(0, 1)
        digest = hashlib.sha256(data).hexdigest()[:16]  # the cache key: the same upload twice reuses its maps
        image = normalize(display.unsqueeze(0), self.mean, self.std)[0]
        return Sample(key=f"upload:{name}:{digest}", image=image, display=display)

    # --- the model ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, sample: Sample) -> Prediction:
        """The predicted class and its softmax probability."""
        logits = self.model(sample.image.unsqueeze(0).to(self.device))[0][0]
        probabilities = logits.float().softmax(0)
        label = int(probabilities.argmax())
        name = self.class_names[label] if label < len(self.class_names) else str(label)
        return Prediction(label, name, float(probabilities[label]))

    def map(self, sample: Sample, method: str, reference: str = "") -> Tensor:
        """H×W map in [0, 1] of ``method`` (``own`` or a CAM) for the predicted class, cached."""
        key = (sample.key, method, reference)
        if key not in self._maps:
            options = self._fam() if method == "fam" and not reference else None
            fn = map_fn(self.model, method, options)
            self._maps[key] = fn(sample.image.unsqueeze(0).to(self.device))[0].float().cpu()
            while len(self._maps) > 512:  # a long session: forget the oldest maps
                self._maps.popitem(last=False)
        return self._maps[key]

    def scores(self, sample: Sample, method: str) -> ImageScores:
        """The pointing game, energy pointing game and mask IoU (where the image has a mask), deletion and
        insertion AUC, Average Drop and Increase in Confidence of one map on one image, as eval.py defines
        them (:data:`ONE_IMAGE` protocol)."""
        image = sample.image.unsqueeze(0).to(self.device)
        with torch.no_grad():
            predicted = self.model(image)[0].argmax(1)
        label = torch.tensor([sample.label], device=self.device) if sample.label is not None else predicted
        probe = Probe(
            images=image,
            labels=label,
            masks=sample.mask.unsqueeze(0).to(self.device) if sample.mask is not None else None,
            ids=torch.zeros(1, dtype=torch.long),
            display=sample.display.unsqueeze(0),
        )
        maps = self.map(sample, method).unsqueeze(0).to(self.device)
        options = self._fam() if method == "fam" else None
        scored: MapScores = score_maps(
            self.model, probe, maps, map_fn(self.model, method, options), ONE_IMAGE, self.num_classes, method
        )
        return ImageScores(scored.values, {k: v.cpu() for k, v in scored.curves.items()})

    # --- FAM ----------------------------------------------------------------------------------------------
    def _fam(self) -> dict[str, Any]:
        """FAM's options with the class prototypes of the training data where the checkpoint records it,
        else the FC row of the predicted class (the checkpoint's model has one)."""
        if self._fam_options is None:
            reference = "prototypes" if self.data_config is not None else "fc"
            setup = fam_setup(
                self.model,
                {"reference": reference, "prototype_images": 20},
                ckpt_path=self.checkpoint,
                data_config=self.data_config,
                data_dir=self.data_dir,
            )
            self._fam_options, self.fam_description = setup.options, setup.description
        return self._fam_options

    def fam_pair(self, sample: Sample, reference: Sample) -> tuple[Tensor, Tensor, float]:
        """FAM on a pair (method.md §3): the map on ``sample`` for ``reference``, the map on ``reference`` with
        the roles swapped, and their cosine similarity."""
        fam = cams.create("fam", self.model, similarity="cosine")
        pair = fam.pair(
            sample.image.unsqueeze(0).to(self.device), reference.image.unsqueeze(0).to(self.device)
        )
        assert pair.reference_maps is not None  # an image reference always has its own map
        return pair.maps[0].float().cpu(), pair.reference_maps[0].float().cpu(), float(pair.score[0])

    def reference_map(self, sample: Sample) -> tuple[Tensor, str]:
        """FAM against the predicted class's prototype (or FC row), and a sentence naming that reference."""
        maps = self.map(sample, "fam")
        return maps, self.fam_description


@dataclass
class AcrossRuns:
    """The same image's own map in every run of a sweep, and their pairwise agreement (method.md §1.5):
    IoU of the maps thresholded at > 100/255 of each map's range, and Spearman's ρ of their pixels."""

    names: list[str]
    maps: list[Tensor]
    iou: Tensor
    spearman: Tensor


class Sweep:
    """Every run of a sweep folder; ``load(checkpoint)`` gives each run's explorer (the page's is cached, so
    each model is loaded once)."""

    def __init__(self, target: Target, load: Callable[[str], Explorer]) -> None:
        self.target = target
        self.load = load

    def across_runs(self, sample: Sample) -> AcrossRuns:
        """``sample``'s own map in each run (the image as the first run's data gives it: the runs of one sweep
        share their data) and the n×n IoU and Spearman matrices."""
        maps = [self.load(str(c)).map(sample, OWN) for c in self.target.checkpoints]
        iou, rho = similarity_matrices([m.unsqueeze(0) for m in maps], threshold=PAPER_THRESHOLD)
        return AcrossRuns(list(self.target.names), maps, iou, rho)


def grid_png(image: Tensor, maps: dict[str, Tensor], title: str = "") -> bytes:
    """The row on screen (the image, then each map over it) as PNG bytes, for the page's download button."""
    buffer = io.BytesIO()
    save_side_by_side(buffer, image, maps, title)
    return buffer.getvalue()
