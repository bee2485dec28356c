"""What a score depends on besides the model and the images (:class:`Protocol`, the same for eval.py and the
reproduction study, so that one protocol gives one number), and its checks: ``eval.py``'s protocol
(``protocols[eval.protocol]`` of ``conf/eval.yaml`` with the ``eval.<key>`` overrides) and the counts and fractions
of ``eval.*`` and ``stability.*``, each refused in one sentence that names its key."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lficam.core.errors import UnknownNameError, UserError
from lficam.metrics.faithfulness import default_pixels_per_step

#: the keys a protocol sets (conf/eval.yaml ``protocols``); an ``eval.<key>`` that is not null overrides it
PROTOCOL_KEYS = ("num_images", "curve_steps", "road_percentages")

#: what each count of conf/eval.yaml is, for the sentence that refuses a value
_MEANING = {
    "num_images": "a number of test images to score the maps on",
    "curve_steps": "a number of deletion/insertion steps",
    "pixels_per_step": "a number of pixels per deletion/insertion step",
    "batch_size": "a number of images per batch",
    "retrieval_pictures": "a number of retrieval queries to draw",
}


def protocol_options(options: DictConfig, protocols: DictConfig | None) -> dict[str, Any]:
    """The protocol's values (``protocols[eval.protocol]``) with every ``eval.<key>`` that is not null on top;
    a value no evaluation can use is one sentence naming the key it came from."""
    name = options.get("protocol") or "quick"
    protocols = protocols or {}
    if name not in protocols:
        raise UnknownNameError("eval.protocol", name, list(protocols))
    chosen = OmegaConf.to_container(protocols[name], resolve=True)
    given = {k: options.get(k) for k in PROTOCOL_KEYS if options.get(k) is not None}
    chosen.update(OmegaConf.to_container(OmegaConf.create(given), resolve=True))
    for key in PROTOCOL_KEYS:
        source = f"eval.{key}" if key in given else f"protocols.{name}.{key}"
        if key == "road_percentages":
            check_fractions(source, chosen.get(key))
        else:
            check_count(source, chosen.get(key), _MEANING[key])
    return {"protocol": name, **chosen}


def check_count(key: str, value: Any, meaning: str, least: int = 1) -> None:
    """Refuse a count that is not a whole number of at least ``least`` (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{key}={value!r} is not {meaning}; use a whole number of at least {least}.")


def check_fractions(key: str, value: Any) -> None:
    """ROAD's removed fractions: a non-empty list of numbers strictly between 0 and 1."""
    numbers = isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    if not numbers or not value or not all(0 < v < 1 for v in value):
        raise UserError(
            f"{key}={value!r} is not a list of fractions of the image to remove; give numbers strictly between "
            "0 and 1, e.g. eval.road_percentages=[0.2,0.5,0.8]."
        )


def check_options(cfg: DictConfig) -> None:
    """The counts of conf/eval.yaml that no evaluation can use (0 or negative images, steps, batches): one
    sentence before a model is loaded. The protocol's values are checked by :func:`protocol_options`."""
    options = cfg.get("eval") or {}
    if options.get("pixels_per_step") is not None:
        check_count("eval.pixels_per_step", options.pixels_per_step, _MEANING["pixels_per_step"])
    check_count("eval.batch_size", options.get("batch_size"), _MEANING["batch_size"])
    check_count(
        "eval.retrieval_pictures", options.get("retrieval_pictures", 8), _MEANING["retrieval_pictures"], 0
    )
    protocol_options(options, cfg.get("protocols"))


def check_stability_options(options: DictConfig) -> None:
    """``stability.*``: counts of at least 1 and a threshold that selects part of a map's range."""
    check_count("stability.num_images", options.get("num_images"), "a number of test images to compare")
    check_count("stability.batch_size", options.get("batch_size"), _MEANING["batch_size"])
    threshold = options.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < 1:
        raise UserError(
            f"stability.threshold={threshold!r} is not a fraction of a map's range; use a number from 0 up to "
            "(not including) 1, e.g. the paper's 0.39215686 (100/255)."
        )


#: which maps get the input-stability metrics: the model's own only (eval.py) or every method (the study)
STABILITY_OWN, STABILITY_ALL = "own", "all"


@dataclass(frozen=True)
class Protocol:
    """Every choice a map score depends on (method.md §4).

    - ``num_images``: the first N test images, on which the maps are computed and localisation is scored;
      ``faithfulness_images`` / ``stability_images`` (None: all N): the costlier metrics on the first of them.
    - deletion/insertion: ``pixels_per_step`` pixels a step; None: ceil(H·W / ``curve_steps``) (RISE: 224 steps).
    - ``mask_iou_threshold``: the mask IoU's binarisation of each map's min-max range.
    - ROAD (MoRF, LeRF) at ``road_percentages`` when ``road``.
    - input stability when ``stability``: ``noise_samples`` draws of x + N(0, ``noise_std``²) and the left-right
      flip, for the own map (``stability_maps="own"``) or every map (``"all"``).
    """

    name: str = "quick"
    num_images: int = 32
    curve_steps: int = 16
    pixels_per_step: int | None = None
    road_percentages: tuple[float, ...] = (0.2, 0.5, 0.8)
    faithfulness: bool = True
    road: bool = True
    stability: bool = True
    faithfulness_images: int | None = None
    stability_images: int | None = None
    stability_maps: str = STABILITY_OWN
    noise_std: float = 0.1
    noise_samples: int = 4
    mask_iou_threshold: float = 0.5
    batch_size: int = 128

    def __post_init__(self) -> None:
        for key in ("num_images", "curve_steps", "batch_size", "noise_samples"):
            check_count(key, getattr(self, key), "a count")
        for key in ("pixels_per_step", "faithfulness_images", "stability_images"):
            if getattr(self, key) is not None:
                check_count(key, getattr(self, key), "a count")
        if self.road:
            check_fractions("road_percentages", list(self.road_percentages))
        if not 0 <= self.mask_iou_threshold < 1:
            raise UserError(
                f"mask_iou_threshold={self.mask_iou_threshold!r} is not a fraction of a map's range; use a number "
                "from 0 up to (not including) 1."
            )
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise UserError(f"noise_std={self.noise_std!r} is not a noise level; use a number of at least 0.")
        if self.stability_maps not in (STABILITY_OWN, STABILITY_ALL):
            raise UnknownNameError("stability_maps", self.stability_maps, [STABILITY_OWN, STABILITY_ALL])

    def step_pixels(self, height: int, width: int) -> int:
        """Pixels removed or inserted per deletion/insertion step for H×W images."""
        return self.pixels_per_step or default_pixels_per_step(height, width, self.curve_steps)

    def first(self, metric: str, available: int) -> int:
        """How many of the ``available`` images the ``faithfulness`` or ``stability`` metrics use."""
        chosen = getattr(self, f"{metric}_images")
        return available if chosen is None else min(int(chosen), available)

    def record(self) -> dict[str, Any]:
        """The protocol as plain values (metrics.json, the study's cache key)."""
        values = dataclasses.asdict(self)
        values["road_percentages"] = list(self.road_percentages)
        return values


def eval_protocol(options: DictConfig, protocols: DictConfig | None) -> Protocol:
    """``eval.py``'s protocol: ``protocols[eval.protocol]`` with every ``eval.<key>`` that is not null on top
    (checked by :func:`protocol_options`), and the switches and batch size of ``eval.*``."""
    chosen = protocol_options(options, protocols)
    return Protocol(
        name=chosen["protocol"],
        num_images=chosen["num_images"],
        curve_steps=chosen["curve_steps"],
        road_percentages=tuple(float(p) for p in chosen["road_percentages"]),
        pixels_per_step=options.get("pixels_per_step"),
        faithfulness=bool(options.get("faithfulness", True)),
        road=bool(options.get("road", True)),
        batch_size=int(options.batch_size),
    )


def study_protocol(options: Any, full: bool) -> Protocol:
    """The reproduction study's protocol (``study.eval``): every map's localisation on the first ``images``;
    with ``full``, faithfulness on the first ``faithfulness_images`` (ceil(H·W / ``faithfulness_steps``) pixels a
    step) and input stability of every map on the first ``stability_images``; no ROAD."""
    return Protocol(
        name="study",
        num_images=int(options.images),
        curve_steps=int(options.faithfulness_steps),
        faithfulness=full,
        road=False,
        stability=full,
        faithfulness_images=int(options.faithfulness_images),
        stability_images=int(options.stability_images),
        stability_maps=STABILITY_ALL,
        noise_std=float(options.noise_std),
        noise_samples=int(options.noise_samples),
        mask_iou_threshold=float(options.mask_iou_threshold),
        batch_size=int(options.batch_size),
    )
