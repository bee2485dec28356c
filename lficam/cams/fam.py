"""FAM (Liao, Gao, Zhang 2023, arXiv 2307.05017) and Grad-CAM on a similarity: maps that explain why two
embeddings are alike, for models with or without an FC classifier.

The embedding of an image is e = GAP(A(x)), the target layer's activations averaged over positions
(:func:`pooled_features`); the network after the target layer, the classifier included, never runs.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lficam.cams.base import CAMMethod, _check_batch, _StopForward, record, weighted_sum
from lficam.cams.layers import find_classifier, resolve_target_layer
from lficam.core.errors import UnknownNameError, UserError
from lficam.core.maps import minmax, upsample
from lficam.core.probing import evaluating

SIMILARITIES = ("cosine", "euclidean")


def check_similarity(name: str) -> str:
    if name not in SIMILARITIES:
        raise UnknownNameError("FAM similarity", name, SIMILARITIES)
    return name


def similarity_score(e1: Tensor, e2: Tensor, similarity: str = "cosine") -> Tensor:
    """The score FAM's channel terms sum to, one per row: cos(e₁, e₂) or −‖e₁ − e₂‖² (B×K, B×K → B)."""
    if check_similarity(similarity) == "cosine":
        return _cosine_terms(e1, e2).sum(dim=1)
    return -(e1 - e2).square().sum(dim=1)


def describe_score(value: float, similarity: str) -> str:
    """The score as a picture's title says it."""
    if similarity == "cosine":
        return f"cosine similarity {value:.3f}"
    return f"squared distance {-value:.3f}"


def _cosine_terms(e1: Tensor, e2: Tensor) -> Tensor:
    norms = e1.norm(dim=1, keepdim=True) * e2.norm(dim=1, keepdim=True)
    return e1 * e2 / norms.clamp_min(torch.finfo(e1.dtype).tiny)


def target_layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model`` ("" for the model itself): what embedding files record."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise UserError(f"{type(layer).__name__} is not a layer of {type(model).__name__}.")


def pooled_features(
    model: nn.Module, images: Tensor, target_layer: nn.Module | str | None = None, *, batch_size: int = 256
) -> Tensor:
    """e = GAP(A(x)): N×K float32 embeddings at the target layer, the forward stopped right after it.

    Runs like every CAM (eval mode, caller's flags and grad mode restored), in chunks of
    ``batch_size``, on the images' device.
    """
    _check_batch(images)
    layer = resolve_target_layer(model, target_layer)
    parts = []
    with evaluating(model, allow_grad=True):
        for chunk in images.split(batch_size):
            chunk = chunk.detach().clone() if chunk.is_inference() else chunk.detach()
            with record(layer, stop=True) as recording, suppress(_StopForward):
                model(chunk)
            if recording.activation is None:
                raise UserError(
                    f"The target layer {type(layer).__name__} was not called during the forward pass: "
                    "choose a layer that the model uses."
                )
            parts.append(recording.activation.float().mean(dim=(2, 3)))
    return torch.cat(parts)


class FAMPair(NamedTuple):
    """FAM of a pair: the map on the image, the map on the reference (None for an embedding) and the score."""

    maps: Tensor
    reference_maps: Tensor | None
    score: Tensor


class _ReferenceCAM(CAMMethod):
    """What FAM and Grad-CAM on a similarity share: where the second embedding e₂ comes from.

    In order of precedence: ``reference=`` of the call, ``reference=`` of the constructor (images shaped
    B×C×H×W or 1×C×H×W of the images' size, or embeddings B×K, 1×K or K), ``prototypes=`` (a C×K table of
    class prototypes, the row of each image's class: targets, else the predicted class), else the row W_c
    of the model's linear classifier.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        reference: Tensor | None = None,
        prototypes: Tensor | None = None,
        similarity: str = "cosine",
    ) -> None:
        super().__init__(model, target_layer)
        self.similarity = check_similarity(similarity)
        self.reference = reference
        if prototypes is not None and (not isinstance(prototypes, Tensor) or prototypes.ndim != 2):
            shape = tuple(prototypes.shape) if isinstance(prototypes, Tensor) else type(prototypes).__name__
            raise UserError(f"FAM's prototypes must be a table shaped classes×K, got {shape}.")
        self.prototypes = prototypes

    def _activation_and_reference(
        self, x: Tensor, targets: Any, reference: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """A(x) (B×K×h×w, float32) and e₂ (B×K or 1×K) from one forward (two when the reference is images)."""
        reference = self.reference if reference is None else reference
        if reference is None and self.prototypes is None and find_classifier(self.model) is None:
            raise UserError(
                f"{type(self).__name__} needs a reference (an image or an embedding) for a model without a "
                "linear classifier: pass reference= to lficam.cams.create or to the call."
            )
        recording = self.activations(x, logits=reference is None)  # logits pick the class row
        activation = recording.activation.float()
        prototype = self._prototype(reference, targets, recording.logits, x)
        if prototype.shape[1] != activation.shape[1]:
            raise UserError(
                f"FAM's reference embedding has {prototype.shape[1]} features but the target layer has "
                f"{activation.shape[1]} channels: build it from the same layer."
            )
        return activation, prototype

    def _prototype(self, reference: Tensor | None, targets: Any, logits: Tensor | None, x: Tensor) -> Tensor:
        if reference is None:
            classes = self.resolve_targets(targets, logits)
            if self.prototypes is not None:
                if self.prototypes.shape[0] != logits.shape[1]:
                    raise UserError(
                        f"FAM got {self.prototypes.shape[0]} class prototypes for a model with "
                        f"{logits.shape[1]} classes: give one per class."
                    )
                return self.prototypes.detach().to(x.device).float()[classes]
            return find_classifier(self.model).weight[classes].detach().float()
        if not isinstance(reference, Tensor):
            raise UserError(
                f"FAM's reference must be a tensor (images or embeddings), got {type(reference).__name__}."
            )
        reference = reference.detach().to(x.device)
        if reference.is_inference():
            reference = reference.clone()
        if reference.ndim == 4:
            self._check_reference_images(reference, x)
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

    @staticmethod
    def _check_reference_images(reference: Tensor, x: Tensor) -> None:
        if reference.shape[0] not in (1, x.shape[0]):
            raise UserError(
                f"FAM got {reference.shape[0]} reference images for {x.shape[0]} images: give one, or one per image."
            )
        if reference.shape[1:] != x.shape[1:]:
            raise UserError(
                f"FAM's reference images are {'×'.join(map(str, reference.shape[1:]))} but the images are "
                f"{'×'.join(map(str, x.shape[1:]))}: resize the references to the images' size."
            )


class FAM(_ReferenceCAM):
    """FAM: explains why an image's embedding is similar to a reference's, for models without an FC classifier.

    With e₁ = GAP(A(x)) and e₂ the reference's embedding (see below), per channel k:
      cosine:    c_k = e₁_k e₂_k / (‖e₁‖ ‖e₂‖)    (the terms sum to the cosine similarity)
      euclidean: c_k = −(e₁_k − e₂_k)²            (the terms sum to minus the squared distance)
      L = ReLU(Σ_k ŵ_k A^k(x))
    Normalisation ŵ: the paper's exact form is unverified (method.md §3); this project's choice is
      cosine:    ŵ = c / Σ_k |c_k|   signs kept, so channels that speak against the similarity subtract;
                                      a positive scale, so the final (min-max scaled) map is that of c itself;
      euclidean: ŵ = (c − min c) / (max c − min c) over the channels: the channel where the embeddings agree
                                      best weighs 1, the one where they differ most 0 (every euclidean term is
                                      ≤ 0, so without the shift the map would be empty); all terms equal → 0.
    Both weightings are symmetric in e₁ and e₂, so FAM explains both sides of a pair with the same ŵ
    (:meth:`pair`: the map on x₁ for the reference x₂, and on x₂ with the roles swapped).

    The reference, given to the constructor or per call (``cam(x, reference=r)``), is any of:
      - images shaped B×C×H×W or 1×C×H×W, of the images' size (x₂; one for the whole batch when it has one);
      - embeddings shaped B×K, 1×K or K (e.g. a prototype: the mean embedding of a few images of a class);
      - ``prototypes=`` a classes×K table (:mod:`lficam.evaluation.prototypes`), the row of each image's class;
      - nothing, on a model with a linear classifier: the class's FC row W_c serves as the prototype.
    On a metric-learning or retrieval network, target_layer is the layer whose pooled output is the embedding.

        cam = lficam.cams.create("fam", model, similarity="cosine")
        maps = cam(query, reference=match)           # B×H×W in [0, 1]
        pair = cam.pair(query, match)                # both sides' maps and cos(e₁, e₂)
    """

    name = "fam"

    def compute(self, x: Tensor, targets: Any, reference: Tensor | None = None) -> Tensor:
        activation, prototype = self._activation_and_reference(x, targets, reference)
        embedding = activation.mean(dim=(2, 3))
        weights = self.channel_weights(embedding, prototype.expand_as(embedding))
        return F.relu(weighted_sum(weights, activation))

    def channel_weights(self, e1: Tensor, e2: Tensor) -> Tensor:
        """ŵ (B×K) from two embeddings, as the class docstring says."""
        if self.similarity == "cosine":
            terms = _cosine_terms(e1, e2)
            return terms / terms.abs().sum(dim=1, keepdim=True).clamp_min(torch.finfo(e1.dtype).tiny)
        terms = -(e1 - e2).square()
        low = terms.amin(dim=1, keepdim=True)
        span = terms.amax(dim=1, keepdim=True) - low
        return torch.where(span > 0, (terms - low) / torch.where(span > 0, span, 1.0), 0.0)

    def pair(self, x: Tensor, reference: Tensor, *, raw: bool = False) -> FAMPair:
        """FAM on both sides of (x, reference): the map on x explaining its similarity to the reference, the
        map on the reference with the roles swapped, and the similarity score (cos, or −‖e₁−e₂‖²) per image.

        reference: images of x's size (1 or B) — both maps come back — or embeddings (1×K, B×K or K), which
        have no map (``reference_maps`` is None). Maps as ``cam(x)`` returns them (``raw=True``: unscaled).
        """
        _check_batch(x)
        if not isinstance(reference, Tensor):
            raise UserError(f"FAM's reference must be a tensor, got {type(reference).__name__}.")
        with evaluating(self.model, allow_grad=True):
            images = x.detach().clone() if x.is_inference() else x.detach()
            activation = self.activations(images, logits=False).activation.float()
            e1 = activation.mean(dim=(2, 3))
            reference_activation = None
            if reference.ndim == 4:
                self._check_reference_images(reference, images)
                other = reference.detach().to(images.device, images.dtype).clone()
                reference_activation = self.activations(other, logits=False).activation.float()
                e2 = reference_activation.mean(dim=(2, 3))
            else:
                e2 = self._prototype(reference, None, None, images)
            if e2.shape[1] != e1.shape[1]:
                raise UserError(
                    f"FAM's reference embedding has {e2.shape[1]} features but the target layer has "
                    f"{e1.shape[1]} channels: build it from the same layer."
                )
            e2 = e2.expand_as(e1)
            maps = F.relu(weighted_sum(self.channel_weights(e1, e2), activation))
            reference_maps = None
            if reference_activation is not None:
                # The roles swapped: e₂ explained against e₁, on the reference's own activations.
                if reference_activation.shape[0] != e1.shape[0]:
                    reference_activation = reference_activation.expand(e1.shape[0], -1, -1, -1)
                swapped = self.channel_weights(e2, e1)
                reference_maps = F.relu(weighted_sum(swapped, reference_activation))
            score = similarity_score(e1, e2, self.similarity)
        if not raw:
            maps = minmax(upsample(maps, tuple(x.shape[-2:])))
            if reference_maps is not None:
                reference_maps = minmax(upsample(reference_maps, tuple(reference.shape[-2:])))
        return FAMPair(maps, reference_maps, score)


class SimilarityGradCAM(_ReferenceCAM):
    """Grad-CAM applied to a similarity score, as the FAM paper compares (Liao, Gao, Zhang 2023).

    With e₁ = GAP(A(x)) and the reference's embedding e₂ (the same choices as :class:`FAM`) and
    s = cos(e₁, e₂) (or −‖e₁ − e₂‖² with ``similarity="euclidean"``):
      α_k = mean over positions of ∂s/∂A^k,   L = ReLU(Σ_k α_k A^k)
    Since e₁ is the mean of A over its Z positions, ∂s/∂A^k_ij = (1/Z) ∂s/∂e₁_k; for the cosine,
    ∂s/∂e₁_k = e₂_k/(‖e₁‖‖e₂‖) − s · e₁_k/‖e₁‖². The gradient is taken by autograd from A only (the
    forward stops at the target layer; nothing after it takes part in the score).
    """

    name = "simgradcam"

    def compute(self, x: Tensor, targets: Any, reference: Tensor | None = None) -> Tensor:
        activation, prototype = self._activation_and_reference(x, targets, reference)
        with torch.enable_grad():
            leaf = activation.detach().requires_grad_(True)
            embedding = leaf.mean(dim=(2, 3))
            score = similarity_score(embedding, prototype.expand_as(embedding), self.similarity).sum()
            (gradient,) = torch.autograd.grad(score, leaf)
        alpha = gradient.mean(dim=(2, 3))
        return F.relu(weighted_sum(alpha, activation))
