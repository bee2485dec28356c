"""The model as an embedding network: ``python eval.py ckpt_path=<ckpt> eval.task=retrieval``.

The embedding of an image is e = GAP(A(x)), the target layer's activations pooled over positions; the
classifier (and LFI-CAM's or ABN's head after the backbone) is dropped, so any backbone serves.

- Recall@k (as in deep metric learning, Song et al. 2016): the share of queries (the test split) with at
  least one image of their own class among their k most cosine-similar gallery images (the training split
  without augmentation, or ``eval.gallery=<folder>`` laid out as ``<folder>/<class>/*.png``).
- Faithfulness on the similarity (method.md §4.1 with another score): for query x and its top match m,
  the score of a perturbed query x_t is s_t = cos(e(x_t), e(m)). Deletion replaces the query's top pixels,
  ranked by the map, step by step with 0 in normalised space; insertion starts from the query blurred
  (Gaussian, kernel 11, σ 5) and pastes the original pixels back; AUC by the trapezoid rule over the
  fraction of pixels in [0, 1], n = ceil(H·W/224) pixels per step by default. Deletion lower is better,
  insertion higher. Measured for FAM and for Grad-CAM applied to the similarity
  (:class:`~lficam.cams.fam.SimilarityGradCAM`), as the FAM paper compares.
- Pictures: FAM on the query and on its top match for the first queries.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lficam import cams
from lficam.cams.fam import SimilarityGradCAM, describe_score, pooled_features, target_layer_name
from lficam.cams.layers import resolve_target_layer
from lficam.checkpoints.loading import load
from lficam.core.devices import choose_device
from lficam.core.errors import UnknownNameError, UserError
from lficam.core.pictures import save_deletion_insertion
from lficam.data.base import first_items
from lficam.data.image_folder import EXTENSIONS, ImageFileDataset
from lficam.evaluation.pairs import save_panel_rows
from lficam.evaluation.protocol import protocol_options
from lficam.evaluation.prototypes import data_split, training_data_config
from lficam.evaluation.scores import image_mean
from lficam.metrics.faithfulness import default_pixels_per_step, gaussian_blur, switch_curve

log = logging.getLogger("lficam")

TASKS = ("classification", "retrieval")
METHODS = ("fam", "simgradcam")


def check_task(name: str) -> str:
    if name not in TASKS:
        raise UnknownNameError("eval.task", name, TASKS)
    return name


# ------------------------------------------------------------------------------------------ embeddings


def embed_dataset(
    model: nn.Module,
    dataset: Dataset,
    target_layer: nn.Module | str | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """(N×K embeddings, N labels) of every item of a split, in order."""
    embeddings, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        embeddings.append(
            pooled_features(model, batch["image"].to(device), target_layer, batch_size=batch_size)
        )
        labels.append(torch.as_tensor(batch["label"]).long())
    if not embeddings:
        raise UserError("The split to embed holds no images.")
    return torch.cat(embeddings).cpu(), torch.cat(labels)


def cosine_similarities(queries: Tensor, gallery: Tensor) -> Tensor:
    """Q×G cosine similarities (a zero vector is similar to nothing: 0)."""
    tiny = torch.finfo(torch.float32).tiny
    q = queries.float() / queries.float().norm(dim=1, keepdim=True).clamp_min(tiny)
    g = gallery.float() / gallery.float().norm(dim=1, keepdim=True).clamp_min(tiny)
    return q @ g.T


def recall_at_k(
    queries: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    ks: tuple[int, ...] = (1, 5),
) -> dict[int, float]:
    """Recall@k for each k: the share of queries with an image of their class among the k gallery images
    of highest cosine similarity (ties by gallery order). k larger than the gallery counts the whole gallery."""
    if queries.shape[0] == 0 or gallery.shape[0] == 0:
        raise UserError("Recall@k needs at least one query and one gallery image.")
    similarities = cosine_similarities(queries, gallery)
    largest = min(max(ks), gallery.shape[0])
    # a stable descending sort: equal similarities keep gallery order, so the answer is reproducible
    top = similarities.argsort(dim=1, descending=True, stable=True)[:, :largest]
    hits = gallery_labels.to(top.device)[top] == query_labels.to(top.device)[:, None]
    return {k: float(hits[:, : min(k, largest)].any(dim=1).float().mean()) for k in ks}


def top_matches(queries: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
    """(index, cosine similarity) of each query's most similar gallery image (the first of equals)."""
    similarities = cosine_similarities(queries, gallery)
    index = similarities.argsort(dim=1, descending=True, stable=True)[:, 0]
    return index, similarities.gather(1, index[:, None]).squeeze(1)


# ------------------------------------------------------------------------------------- faithfulness


def similarity_curve(
    model: nn.Module,
    images: Tensor,
    matches: Tensor,
    maps: Tensor,
    kind: str = "deletion",
    target_layer: nn.Module | str | None = None,
    *,
    pixels_per_step: int | None = None,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """(fractions S+1, B×(S+1) cosine similarities) of each perturbed query to its match's embedding.

    images: B×3×H×W queries (normalised); matches: B×K match embeddings; maps: B×H×W (upsampled when
    smaller). Step s switches the pixels of rank < min(s·n, H·W): deletion to 0, insertion from the blurred
    query back to the query. A flat map ranks nothing and gives NaN.
    """
    if kind not in ("deletion", "insertion"):
        raise UnknownNameError("similarity curve", kind, ("deletion", "insertion"))
    if matches.ndim != 2 or matches.shape[0] != images.shape[0]:
        raise UserError(
            f"Expected one match embedding per query ({images.shape[0]}), got {tuple(matches.shape)}."
        )
    matches = matches.to(images.device).float()
    start = images if kind == "deletion" else gaussian_blur(images)
    end = None if kind == "deletion" else images

    def similarity(perturbed: Tensor, i: Tensor) -> Tensor:
        embedding = pooled_features(model, perturbed, target_layer, batch_size=batch_size)
        return cosine_similarities(embedding, matches[i]).diagonal()

    fractions, curve = switch_curve(
        images, maps, start, end, similarity, pixels_per_step=pixels_per_step, batch_size=batch_size
    )
    return fractions.cpu(), curve.cpu()


def similarity_faithfulness(
    model: nn.Module,
    images: Tensor,
    matches: Tensor,
    maps: Tensor,
    target_layer: nn.Module | str | None = None,
    *,
    pixels_per_step: int | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Per-image deletion and insertion AUC of the similarity, and the curves (``fractions``, ``deletion``,
    ``insertion``)."""
    out: dict[str, Tensor] = {}
    for kind in ("deletion", "insertion"):
        fractions, curve = similarity_curve(
            model,
            images,
            matches,
            maps,
            kind,
            target_layer,
            pixels_per_step=pixels_per_step,
            batch_size=batch_size,
        )
        out["fractions"], out[kind] = fractions, curve
        out[f"{kind}_auc"] = torch.trapezoid(curve, fractions, dim=1)
    return out


# ------------------------------------------------------------------------------------------- gallery


def gallery_folder(folder: str | Path, class_names: list[str], size: int, mean: Any, std: Any) -> Dataset:
    """``<folder>/<class>/*`` as a split: images resized to size×size and normalised, labels by class name."""
    from torchvision.transforms import v2

    root = Path(str(folder)).expanduser()
    if not root.is_dir():
        raise UserError(
            f"eval.gallery={str(folder)!r} is neither 'train' nor a folder: give a folder laid out as <folder>/<class>/*.png."
        )
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = sorted(set(found) - set(class_names))
    if unknown or not found:
        raise UserError(
            f"The gallery {str(root)!r} has class folders {unknown[:5] or found} but the model's classes are "
            f"{class_names[:10]}: put each gallery image under <folder>/<one of those names>/."
        )
    samples = [
        (p, class_names.index(name))
        for name in found
        for p in sorted((root / name).rglob("*"))
        if p.is_file() and p.suffix.lower() in EXTENSIONS
    ]
    if not samples:
        raise UserError(f"The gallery {str(root)!r} holds no images ({', '.join(EXTENSIONS)}).")
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([float(m) for m in mean], [float(s) for s in std]),
        ]
    )
    return ImageFileDataset(samples, transform)


# ----------------------------------------------------------------------------------------- the command


def evaluate_retrieval(cfg: Any) -> dict[str, Any]:
    """``python eval.py ckpt_path=… eval.task=retrieval``: recall@1/@5, similarity deletion/insertion AUC of
    FAM and similarity Grad-CAM on the first ``eval.num_images`` queries, and FAM pictures of query and match."""
    options = cfg.eval
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = choose_device(cfg.get("device"))
    model = load(cfg.ckpt_path, map_location=device)
    similarity = str((cfg.get("fam") or {}).get("similarity", "cosine"))
    batch_size = int(options.batch_size)
    layer = resolve_target_layer(model, None)
    layer_name = target_layer_name(model, layer)

    data = retrieval_data(cfg)
    log.info("Embedding %d test images and %s at %s", len(data.queries), data.gallery_description, layer_name)
    queries, query_labels = embed_dataset(model, data.queries, layer, batch_size=batch_size, device=device)
    gallery, gallery_labels = embed_dataset(model, data.gallery, layer, batch_size=batch_size, device=device)
    recall = recall_at_k(queries, query_labels, gallery, gallery_labels, (1, 5))

    # the same protocol as classification's eval (conf/eval.yaml): its images and deletion/insertion steps
    protocol = protocol_options(options, cfg.get("protocols"))
    batch = first_items(data.queries, int(protocol["num_images"]))
    images = batch["image"].to(device)
    pixels_per_step = options.get("pixels_per_step") or default_pixels_per_step(
        images.shape[-2], images.shape[-1], protocol["curve_steps"]
    )
    match_index, match_score = top_matches(queries[: images.shape[0]], gallery)
    fam = cams.create("fam", model, layer, similarity=similarity)
    methods = {"fam": fam, "simgradcam": SimilarityGradCAM(model, layer)}
    faithfulness, curves = similarity_scores(
        model, layer, methods, images, gallery[match_index].to(device), pixels_per_step, batch_size
    )

    shown = min(int(options.get("retrieval_pictures", 8)), images.shape[0])
    pictures = None
    if shown:
        match_images = torch.stack(
            [torch.as_tensor(data.gallery[int(i)]["image"]) for i in match_index[:shown]]
        )
        pictures = save_query_matches(
            output_dir / "fam_query_match.png",
            fam,
            images[:shown],
            match_images.to(device),
            [_class_name(data.datamodule, int(c)) for c in batch["label"][:shown]],
            [_class_name(data.datamodule, int(gallery_labels[i])) for i in match_index[:shown]],
            getattr(data.datamodule, "denormalize", lambda t: t),
        )
    save_deletion_insertion(
        output_dir / "similarity_deletion_insertion.png", curves, "cosine similarity to the top match"
    )
    report = {
        "checkpoint": str(cfg.ckpt_path),
        "task": "retrieval",
        "embedding": f"GAP of {layer_name} ({queries.shape[1]} features), classifier dropped",
        "queries": f"the test split ({len(data.queries)} images)",
        "gallery": data.gallery_description,
        "recall@1": recall[1],
        "recall@5": recall[5],
        "protocol": {
            "protocol": protocol["protocol"],
            "num_images": int(protocol["num_images"]),
            "curve_steps": int(protocol["curve_steps"]),
            "pixels_per_step": int(pixels_per_step),
        },
        "faithfulness_images": int(images.shape[0]),
        "faithfulness_score": "cosine similarity of the perturbed query to its top match",
        "fam_similarity": similarity,
        "mean_top_match_similarity": float(match_score.mean()),
        "similarity_faithfulness": faithfulness,
    }
    write_retrieval(output_dir, report, pictures)
    return report


@dataclass
class RetrievalData:
    """The queries (the test split), the gallery and a sentence saying what the gallery is."""

    queries: Dataset
    gallery: Dataset
    gallery_description: str
    datamodule: Any


def retrieval_data(cfg: Any) -> RetrievalData:
    """The test split as queries; the training split without augmentation as gallery, or the folder
    ``eval.gallery`` read at the test images' size and normalisation."""
    data_config = (
        OmegaConf.to_container(cfg.data, resolve=True)
        if cfg.get("data")
        else training_data_config(cfg.ckpt_path, "eval.task=retrieval", "pass data=<name>")
    )
    overrides = dict(cfg.eval.get("data_overrides") or {})
    queries, datamodule = data_split(data_config, "test", cfg.paths.data_dir, overrides)
    gallery_name = str(cfg.eval.get("gallery") or "train")
    if gallery_name == "train":
        gallery, _ = data_split(data_config, "train", cfg.paths.data_dir, overrides)
        return RetrievalData(
            queries, gallery, f"the training split ({len(gallery)} images, no augmentation)", datamodule
        )
    size = int(datamodule.input_size or queries[0]["image"].shape[-1])
    gallery = gallery_folder(
        gallery_name, list(datamodule.class_names), size, datamodule.mean, datamodule.std
    )
    return RetrievalData(queries, gallery, f"the folder {gallery_name} ({len(gallery)} images)", datamodule)


def similarity_scores(
    model: nn.Module,
    layer: nn.Module,
    methods: dict[str, Any],
    images: Tensor,
    matches: Tensor,
    pixels_per_step: int,
    batch_size: int,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Tensor]]]:
    """Each method's map of each query given its top match, then the similarity deletion/insertion AUC
    (mean over the queries, :func:`~lficam.evaluation.scores.image_mean`) and the per-query curves."""
    faithfulness: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, Tensor]] = {}
    for name, method in methods.items():
        maps = torch.cat(
            [
                method(chunk, reference=ref)
                for chunk, ref in zip(images.split(batch_size), matches.split(batch_size))
            ]
        )
        result = similarity_faithfulness(
            model, images, matches, maps, layer, pixels_per_step=pixels_per_step, batch_size=batch_size
        )
        faithfulness[name] = {k: image_mean(result[k]) for k in ("deletion_auc", "insertion_auc")}
        curves[name] = {k: result[k] for k in ("fractions", "deletion", "insertion")}
    return faithfulness, curves


def write_retrieval(output_dir: Path, report: dict[str, Any], pictures: Path | None) -> None:
    """retrieval.json and retrieval.md in ``output_dir``, and the table on the terminal."""
    (output_dir / "retrieval.json").write_text(json.dumps(report, indent=2))
    (output_dir / "retrieval.md").write_text(retrieval_markdown(report))
    print_retrieval(report)
    if pictures:
        print(f"FAM of query and top match: {pictures}")
    print(f"Results written to {output_dir}")


def _class_name(datamodule: Any, label: int) -> str:
    names = getattr(datamodule, "class_names", None) or []
    return str(names[label]) if label < len(names) else f"class {label}"


def save_query_matches(
    path: Path,
    fam: Any,
    queries: Tensor,
    matches: Tensor,
    query_names: list[str],
    match_names: list[str],
    denormalize: Any,
) -> Path:
    """One row per query: the query, FAM on it, its top match, FAM on the match (roles swapped)."""
    pair = fam.pair(queries, matches)
    shown_q, shown_m = denormalize(queries).cpu(), denormalize(matches).cpu()
    rows = [
        [
            (shown_q[i], None, f"query: {query_names[i]}"),
            (shown_q[i], pair.maps[i].cpu(), "FAM"),
            (shown_m[i], None, f"match: {match_names[i]}"),
            (
                shown_m[i],
                pair.reference_maps[i].cpu(),
                f"FAM, {describe_score(float(pair.score[i]), fam.similarity)}",
            ),
        ]
        for i in range(queries.shape[0])
    ]
    return save_panel_rows(path, rows, "FAM: why the query and its top match look alike")


def retrieval_markdown(report: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {m} | {v['deletion_auc']:.4f} | {v['insertion_auc']:.4f} |"
        for m, v in report["similarity_faithfulness"].items()
    )
    return (
        f"# {report['checkpoint']}: retrieval\n\n"
        f"Embedding: {report['embedding']}. Queries: {report['queries']}; gallery: {report['gallery']}.\n\n"
        f"recall@1 {report['recall@1']:.4f}, recall@5 {report['recall@5']:.4f}\n\n"
        f"Similarity faithfulness on {report['faithfulness_images']} queries ({report['faithfulness_score']}):\n\n"
        "| method | deletion_auc ↓ | insertion_auc ↑ |\n|---|---|---|\n"
        f"{rows}\n"
    )


def print_retrieval(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"Retrieval with {report['embedding']}: recall@1 {report['recall@1']:.4f}, "
        f"recall@5 {report['recall@5']:.4f} ({report['queries']} against {report['gallery']})"
    )
    table = Table(title=f"Faithfulness on the similarity, {report['faithfulness_images']} queries")
    for column in ("method", "deletion_auc ↓", "insertion_auc ↑"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for method, v in report["similarity_faithfulness"].items():
        table.add_row(method, f"{v['deletion_auc']:.3f}", f"{v['insertion_auc']:.3f}")
    console.print(table)
