"""Class prototypes for FAM (``fam.reference=prototypes``) and the choice of FAM's reference for a classifier.

The prototype of class c is the mean target-layer embedding of the first N training images of the class
(by index in the training split, without augmentation):

    P_c = (1/N_c) Σ_{i ∈ first N_c images of class c} GAP(A(x_i)),   N_c = min(N, images of class c)

It is computed once and cached beside the checkpoint, ``<checkpoint>.fam-prototypes-<key>.safetensors``
(tensors only: the table and N_c; the header records what made it: the checkpoint's SHA-256, size and
mtime, N, the layer, the data config). A cache is used only when all of it matches the request and the
checkpoint on disk; anything else (another checkpoint, N, layer or data, an unreadable file) is recomputed
and rewritten. A folder that cannot be written to gets no cache, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lficam.cams.fam import check_similarity, pooled_features, target_layer_name
from lficam.cams.layers import find_classifier, resolve_target_layer
from lficam.checkpoints.records import recorded_data_config
from lficam.core.errors import UnknownNameError, UserError
from lficam.data.base import content_config

log = logging.getLogger("lficam")

KIND = "lficam-fam-prototypes"
VERSION = 1
REFERENCES = ("fc", "prototypes")


@dataclass
class Prototypes:
    """A classes×K table of prototypes, N_c per class, the layer's name and the cache file (None: not cached)."""

    table: Tensor
    counts: Tensor
    layer: str
    per_class: int
    path: Path | None
    reused: bool


# ------------------------------------------------------------------------------------------ computing


def dataset_labels(dataset: Dataset) -> Tensor:
    """The label of every item of a split, read without loading images where the data set allows it."""
    samples = getattr(dataset, "samples", None)  # image folders: (path, label) pairs
    if isinstance(samples, list) and len(samples) == len(dataset):
        return torch.tensor([int(label) for _, label in samples])
    labels = getattr(dataset, "labels", None)  # in-memory splits without an index map
    plain = getattr(dataset, "indices", None) is None
    if plain and isinstance(labels, Tensor) and labels.ndim == 1 and len(labels) == len(dataset):
        return labels.long()
    return torch.tensor([int(dataset[i]["label"]) for i in range(len(dataset))])


def class_prototypes(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    per_class: int,
    target_layer: nn.Module | str | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """(P, N_c): the classes×K mean embeddings of the first ``per_class`` images of each class, and N_c."""
    if not isinstance(per_class, int) or per_class < 1:
        raise UserError(f"fam.prototype_images must be a whole number of at least 1, got {per_class!r}.")
    labels = dataset_labels(dataset)
    picked = []
    for c in range(num_classes):
        indices = (labels == c).nonzero().flatten()[:per_class]
        if indices.numel() == 0:
            raise UserError(
                f"The training split has no image of class {c}, so it has no prototype; "
                "use fam.reference=fc or train on data with every class."
            )
        picked.append(indices)
    order = torch.cat(picked)
    classes = torch.cat([torch.full((len(i),), c) for c, i in enumerate(picked)])
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sums: Tensor | None = None
    for chunk, chunk_classes in zip(order.split(batch_size), classes.split(batch_size)):
        images = torch.stack([torch.as_tensor(dataset[int(i)]["image"]) for i in chunk]).to(device)
        embedding = pooled_features(model, images, target_layer, batch_size=batch_size).double().cpu()
        if sums is None:
            sums = torch.zeros(num_classes, embedding.shape[1], dtype=torch.float64)
        sums.index_add_(0, chunk_classes, embedding)
    counts = torch.tensor([len(i) for i in picked])
    return (sums / counts[:, None]).float(), counts


# --------------------------------------------------------------------------------------------- caching


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_identity(data_config: dict[str, Any]) -> dict[str, Any]:
    """The data options that decide which images the training split holds (loader settings left out)."""
    return content_config(data_config)


def cache_path(checkpoint: str | Path, layer: str, per_class: int, data_config: dict[str, Any]) -> Path:
    """``<checkpoint>.fam-prototypes-<key>.safetensors``, key = hash of (layer, N, data): one file each."""
    request = json.dumps([layer, per_class, data_identity(data_config)], sort_keys=True, default=str)
    key = hashlib.sha256(request.encode()).hexdigest()[:12]
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.name}.fam-prototypes-{key}.safetensors")


def _provenance(checkpoint: Path, layer: str, per_class: int, data_config: dict[str, Any]) -> dict[str, Any]:
    stat = checkpoint.stat()
    return {
        "kind": KIND,
        "version": VERSION,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": file_digest(checkpoint),
        "checkpoint_size": stat.st_size,
        "checkpoint_mtime": stat.st_mtime,
        "layer": layer,
        "per_class": per_class,
        "data": json.loads(json.dumps(data_identity(data_config), default=str)),
    }


def _read_cache(path: Path, expected: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
    """The cached (table, counts) when the file exists and was made by exactly this request, else None."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            made_by = json.loads((f.metadata() or {}).get(KIND, "null"))
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        log.warning("Prototype cache %s is unreadable (%s); recomputing it.", path, error)
        return None
    # mtime changes when a checkpoint is copied; its content (the hash) is what must match.
    keys = ("kind", "version", "checkpoint_sha256", "layer", "per_class", "data")
    if not isinstance(made_by, dict) or any(made_by.get(k) != expected[k] for k in keys):
        log.info("Prototype cache %s was made by another checkpoint or request; recomputing it.", path)
        return None
    table, counts = tensors.get("prototypes"), tensors.get("counts")
    if table is None or counts is None or table.ndim != 2 or counts.shape != (table.shape[0],):
        log.warning("Prototype cache %s holds no valid table; recomputing it.", path)
        return None
    return table.float(), counts.long()


def _write_cache(path: Path, table: Tensor, counts: Tensor, provenance: dict[str, Any]) -> Path | None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(
            {"prototypes": table.contiguous(), "counts": counts.contiguous()},
            str(tmp),
            metadata={KIND: json.dumps(provenance)},
        )
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    except OSError as error:
        log.warning("Cannot cache the prototypes beside the checkpoint (%s); they are not kept.", error)
        tmp.unlink(missing_ok=True)
        return None
    return path


def cached_prototypes(
    checkpoint: str | Path,
    model: nn.Module,
    *,
    per_class: int,
    data_config: dict[str, Any],
    dataset: Callable[[], Dataset],
    num_classes: int,
    target_layer: nn.Module | str | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Prototypes:
    """The checkpoint's class prototypes from the cache beside it when it was made by this very request,
    else computed on ``dataset()`` (the training split, called only then) and cached."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"Checkpoint {str(checkpoint)!r} does not exist; pass the .ckpt the model came from.")
    layer = target_layer_name(model, resolve_target_layer(model, target_layer))
    path = cache_path(checkpoint, layer, per_class, data_config)
    provenance = _provenance(checkpoint, layer, per_class, data_config)
    cached = _read_cache(path, provenance)
    if cached is not None:
        return Prototypes(cached[0], cached[1], layer, per_class, path, reused=True)
    table, counts = class_prototypes(
        model, dataset(), num_classes, per_class, target_layer, batch_size=batch_size, device=device
    )
    written = _write_cache(path, table, counts, {**provenance, "counts": counts.tolist()})
    return Prototypes(table, counts, layer, per_class, written, reused=False)


# ----------------------------------------------------------------------------------- FAM's reference


@dataclass
class FAMSetup:
    """Keyword options for ``lficam.cams.create("fam", ...)`` and a sentence saying which reference it uses."""

    options: dict[str, Any]
    description: str


def training_data_config(
    checkpoint: str | Path,
    needed_for: str = "fam.reference=prototypes",
    otherwise: str = "use fam.reference=fc",
) -> dict[str, Any]:
    """The data config a training checkpoint records (where its training and test splits come from)."""
    path = Path(checkpoint)
    if path.suffix in (".safetensors", ".st"):
        raise UserError(
            f"{needed_for} needs the training data, which the export {str(path)!r} does not record: pass "
            f"the .ckpt it was exported from, or {otherwise}."
        )
    data = recorded_data_config(path)
    if data is None:
        raise UserError(
            f"{needed_for} needs the training data, which checkpoint {str(path)!r} does not record; {otherwise}."
        )
    return data


def data_split(
    data_config: dict[str, Any],
    split: str = "train",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[Dataset, Any]:
    """(a split of a data config, its data module): ``train`` without augmentation, or ``test``; the
    cache moved to ``data_dir`` (this machine's) when given."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = {**data_config, **(overrides or {}), "augment": False}
    if data_dir is not None and "cache_dir" in config:
        config["cache_dir"] = data_dir
    datamodule = instantiate(OmegaConf.create(config))
    datamodule.setup("fit" if split == "train" else "test")
    return (datamodule.train_set if split == "train" else datamodule.test_set), datamodule


def fam_setup(
    model: nn.Module,
    fam: Any,
    *,
    ckpt_path: str | Path,
    target_layer: nn.Module | str | None = None,
    data_config: dict[str, Any] | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
) -> FAMSetup:
    """FAM's options from a ``fam:`` config (reference fc|prototypes, similarity, prototype_images)."""
    reference = str(fam.get("reference", "fc"))
    similarity = check_similarity(str(fam.get("similarity", "cosine")))
    if reference not in REFERENCES:
        raise UnknownNameError("fam.reference", reference, REFERENCES)
    if reference == "fc":
        if find_classifier(model) is None:
            raise UserError(
                "fam.reference=fc needs a model with a linear classifier: give reference images or "
                "fam.reference=prototypes."
            )
        return FAMSetup({"similarity": similarity}, f"the FC row of the predicted class ({similarity})")
    per_class = fam.get("prototype_images", 50)
    if not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1:
        raise UserError(f"fam.prototype_images must be a whole number of at least 1, got {per_class!r}.")
    data_config = data_config if data_config is not None else training_data_config(ckpt_path)
    classifier = find_classifier(model)
    num_classes = (
        classifier.out_features if classifier is not None else int(data_config.get("num_classes") or 0)
    )
    if num_classes < 1:
        raise UserError("fam.reference=prototypes needs the number of classes: the data config records none.")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    prototypes = cached_prototypes(
        ckpt_path,
        model,
        per_class=per_class,
        data_config=data_config,
        dataset=lambda: data_split(data_config, "train", data_dir)[0],
        num_classes=num_classes,
        target_layer=target_layer,
        batch_size=batch_size,
        device=device,
    )
    where = f"cached in {prototypes.path}" if prototypes.path else "not cached"
    description = (
        f"class prototypes: the mean {prototypes.layer} embedding of {per_class} training images per class "
        f"({'reused, ' if prototypes.reused else ''}{where}; {similarity})"
    )
    return FAMSetup({"similarity": similarity, "prototypes": prototypes.table.to(device)}, description)
