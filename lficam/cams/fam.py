"""FAM (Liao, Gao, Zhang 2023, arXiv 2307.05017): channel weights from the similarity of two embeddings."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lficam.cams.base import CAMMethod, weighted_sum
from lficam.cams.layers import find_classifier
from lficam.errors import UnknownNameError, UserError

SIMILARITIES = ("cosine", "euclidean")


class FAM(CAMMethod):
    """FAM: explains why an image's embedding is similar to a reference, for models without an FC classifier.

    With e₁ = GAP(A(x)) and e₂ = GAP(A(x_ref)) (or a given prototype embedding), per channel k:
      cosine:    c_k = e₁_k e₂_k / (‖e₁‖ ‖e₂‖)    (the terms sum to the cosine similarity)
      euclidean: c_k = −(e₁_k − e₂_k)²            (the terms sum to minus the squared distance)
      L = ReLU(Σ_k ŵ_k A^k(x))
    The normalisation ŵ is unverified in the paper as read here; this project's choice: cosine,
    ŵ = c / Σ_k |c_k| (signs kept, so channels that speak against the similarity subtract); euclidean,
    ŵ = min-max of c over the channels (the channel where the two embeddings agree best weighs 1, the one
    where they differ most 0; all euclidean terms are ≤ 0, so without a shift the map would be empty).

    The reference, given to the constructor or per call (``cam(x, reference=r)``), is any of:
      - images shaped B×C×H×W or 1×C×H×W (x₂; one reference for the whole batch when it has one image);
      - embeddings shaped B×K, 1×K or K (a prototype, e.g. the mean embedding of a few images of a class).
    On a model without an FC classifier (a metric-learning or retrieval network), pass a reference image of
    the class or a prototype built as ``torch.stack([gap(A(x_i)) for ...]).mean(0)``; target_layer is then
    the layer whose pooled output is the embedding. On a model with a linear classifier and no reference,
    the class's FC row W_c (targets, or the predicted class) serves as the prototype.
    """

    name = "fam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        reference: Tensor | None = None,
        similarity: str = "cosine",
    ) -> None:
        super().__init__(model, target_layer)
        if similarity not in SIMILARITIES:
            raise UnknownNameError("FAM similarity", similarity, SIMILARITIES)
        self.similarity = similarity
        self.reference = reference

    def compute(self, x: Tensor, targets: Any, reference: Tensor | None = None) -> Tensor:
        reference = self.reference if reference is None else reference
        if reference is None and find_classifier(self.model) is None:
            raise UserError(
                "FAM needs a reference (an image or an embedding) for a model without a linear classifier: "
                "pass reference= to lficam.cams.create or to the call."
            )
        recording = self.activations(x, logits=reference is None)
        activation = recording.activation.float()
        embedding = activation.mean(dim=(2, 3))
        prototype = self._prototype(reference, targets, recording.logits, x)
        if prototype.shape[1] != embedding.shape[1]:
            raise UserError(
                f"FAM's reference embedding has {prototype.shape[1]} features but the target layer has "
                f"{embedding.shape[1]} channels: build it from the same layer."
            )
        weights = self.channel_weights(embedding, prototype.expand_as(embedding))
        return F.relu(weighted_sum(weights, activation))

    def channel_weights(self, e1: Tensor, e2: Tensor) -> Tensor:
        """ŵ (B×K) from two embeddings, as the class docstring says."""
        if self.similarity == "cosine":
            norms = e1.norm(dim=1, keepdim=True) * e2.norm(dim=1, keepdim=True)
            terms = e1 * e2 / norms.clamp_min(torch.finfo(e1.dtype).tiny)
            return terms / terms.abs().sum(dim=1, keepdim=True).clamp_min(torch.finfo(e1.dtype).tiny)
        terms = -(e1 - e2).square()
        low = terms.amin(dim=1, keepdim=True)
        span = terms.amax(dim=1, keepdim=True) - low
        return torch.where(span > 0, (terms - low) / torch.where(span > 0, span, 1.0), 0.0)

    def _prototype(self, reference: Tensor | None, targets: Any, logits: Tensor | None, x: Tensor) -> Tensor:
        if reference is None:
            classifier = find_classifier(self.model)
            classes = self.resolve_targets(targets, logits)
            return classifier.weight[classes].detach().float()
        if not isinstance(reference, Tensor):
            raise UserError(
                f"FAM's reference must be a tensor (images or embeddings), got {type(reference).__name__}."
            )
        reference = reference.detach().to(x.device)
        if reference.is_inference():
            reference = reference.clone()
        if reference.ndim == 4:
            if reference.shape[0] not in (1, x.shape[0]):
                raise UserError(
                    f"FAM got {reference.shape[0]} reference images for {x.shape[0]} images: give one, or one per image."
                )
            reference = (
                self.activations(reference.to(x.dtype), logits=False).activation.float().mean(dim=(2, 3))
            )
        elif reference.ndim in (1, 2):
            reference = reference.float().reshape(-1, reference.shape[-1])
        else:
            raise UserError(
                f"FAM's reference must be images (B×C×H×W) or embeddings (B×K or K), got shape {tuple(reference.shape)}."
            )
        if reference.shape[0] not in (1, x.shape[0]):
            raise UserError(f"FAM got {reference.shape[0]} reference embeddings for {x.shape[0]} images.")
        return reference
