"""What the metrics share: a pair check, scoring a model in chunks, a per-image mean.

Maps are B×H×W. Images are B×3×H×W in the model's (normalised) input space. A model returns logits or a
:class:`~lficam.models.output.ModelOutput`. Upsampling, min-max, flat maps and the logits come from
:mod:`lficam.core.maps`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from lficam.core.errors import UserError
from lficam.core.maps import check_maps, logits_of, target_classes

Model = Callable[[Tensor], object]


def check_pair(maps_a: Tensor, maps_b: Tensor, names: tuple[str, str] = ("maps", "masks")) -> None:
    check_maps(maps_a, names[0])
    if maps_b.shape != maps_a.shape:
        raise UserError(
            f"Expected {names[0]} and {names[1]} of the same shape B×H×W, got {tuple(maps_a.shape)} and "
            f"{tuple(maps_b.shape)}; upsample the maps to the images' size first."
        )


def probabilities(model: Model, images: Tensor, batch_size: int) -> Tensor:
    """softmax(model(x)) for N images in chunks of ``batch_size`` (call inside :func:`evaluating`)."""
    parts = [torch.softmax(logits_of(model(chunk)).float(), dim=1) for chunk in images.split(batch_size)]
    return torch.cat(parts)


def clean_scores(
    model: Model, images: Tensor, targets: Tensor | None, batch_size: int
) -> tuple[Tensor, Tensor]:
    """(class c per image, its softmax probability on the clean image); c = the prediction when targets is None."""
    probs = probabilities(model, images, batch_size)
    classes = target_classes(probs, targets)
    return classes, probs.gather(1, classes[:, None]).squeeze(1)


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}.")


class PerImageMean(Metric):
    """Mean over images of per-image values, NaN values left out; sums and counts are the states.

    Sums are float64 and reduced by summation, so the value is exact under DDP (every rank's images count
    once) and independent of how images were split into batches. No image seen: NaN.
    """

    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, values: Tensor) -> None:
        values = values.detach().double().flatten()
        valid = ~values.isnan()
        self.total += values[valid].sum()
        self.count += valid.sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()


class PerImageMeans(Metric):
    """Several per-image means at once (one sum and count per key), compute returns a dict of scalars."""

    full_state_update = False
    keys: tuple[str, ...] = ()

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for key in self.keys:
            self.add_state(
                f"{key}_total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(
                f"{key}_count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def _accumulate(self, values: dict[str, Tensor]) -> None:
        for key in self.keys:
            v = values[key].detach().double().flatten()
            valid = ~v.isnan()
            setattr(self, f"{key}_total", getattr(self, f"{key}_total") + v[valid].sum())
            setattr(self, f"{key}_count", getattr(self, f"{key}_count") + valid.sum())

    def compute(self) -> dict[str, Tensor]:
        out = {}
        for key in self.keys:
            count = getattr(self, f"{key}_count")
            total = getattr(self, f"{key}_total")
            out[key] = (total / count).float() if count > 0 else torch.tensor(float("nan"))
        return out
