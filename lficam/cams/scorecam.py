"""Score-CAM (Wang et al., CVPR workshops 2020, arXiv 1910.01279)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lficam.cams.base import CAMMethod, weighted_sum
from lficam.core.errors import UserError
from lficam.core.maps import logits_of, minmax, upsample


class ScoreCAM(CAMMethod):
    """Score-CAM: channels weighted by how much the image they mask convinces the model. No gradients.

      H^k = s(Up(A^k))                  (min-max per channel; a flat channel masks everything out)
      C_k = softmax(f(x ⊙ H^k))_c        (the class probability of the masked image)
      L^c = ReLU(Σ_k softmax_k(C)_k A^k)

    The B·K masked images are never built at once: the (image, channel) pairs are flattened and run
    through the model ``batch_size`` at a time, each chunk's masks made on the fly on x's device.
    Cost: one forward pass plus B·K masked forward passes (fewer when some channels are constant: those
    all mask the image out completely and share one pass on a blank image).

    batch_size: masked images per forward pass (memory ≈ batch_size images plus the model's activations).
    """

    name = "scorecam"

    def __init__(
        self, model: nn.Module, target_layer: nn.Module | str | None = None, *, batch_size: int = 64
    ) -> None:
        super().__init__(model, target_layer)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"Score-CAM's batch_size must be a positive integer, got {batch_size!r}.")
        self.batch_size = batch_size

    def compute(self, x: Tensor, targets: Any) -> Tensor:
        recording = self.activations(x)
        activation = recording.activation.float()
        classes = self.resolve_targets(targets, recording.logits)
        batch, channels, h, w = activation.shape
        flat = activation.reshape(batch * channels, h, w)
        # A constant channel masks the whole image out (s(·) of a flat map is 0): every such pair scores
        # the same blank image, so it is run once instead of once per pair.
        constant = flat.flatten(1).amax(dim=1) == flat.flatten(1).amin(dim=1)
        pairs = torch.nonzero(~constant).squeeze(1)
        scores = torch.empty(batch * channels, device=x.device)
        if bool(constant.any()):
            blank = logits_of(self.model(torch.zeros_like(x[:1]))).float().softmax(dim=1)[0]
            scores[constant] = blank[classes.repeat_interleave(channels)[constant]]
        for start in range(0, pairs.numel(), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            masks = minmax(upsample(flat[chunk], tuple(x.shape[-2:])))
            image = chunk // channels
            logits = logits_of(self.model(x[image] * masks.unsqueeze(1).to(x.dtype)))
            scores[chunk] = logits.float().softmax(dim=1).gather(1, classes[image, None]).squeeze(1)
        weights = scores.view(batch, channels).softmax(dim=1)
        return F.relu(weighted_sum(weights, activation))
