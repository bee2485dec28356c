"""FAM on pairs of images: the references that ``python -m lficam.explain … methods=[fam] reference=b.jpg``
names, both sides' maps, and the pictures (one row of panels per pair).

A reference is an image file (read, resized and normalised like the images) or an embedding file written
by :func:`save_embedding` (safetensors, tensors only; its header records the layer it was taken at, which
must be the layer FAM explains). Give one reference for every image, or one per image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor, nn

from lficam import cams
from lficam.cams.fam import describe_score, pooled_features, target_layer_name
from lficam.cams.layers import resolve_target_layer
from lficam.core.errors import UserError
from lficam.core.pictures import overlay

EMBEDDING_KIND = "lficam-embedding"
EMBEDDING_SUFFIXES = (".safetensors", ".st")

#: One panel: an image (3×H×W in [0, 1]), a map over it (H×W in [0, 1]) or None, and its title.
Panel = tuple[Tensor, Tensor | None, str]


def save_embedding(path: str | Path, embedding: Tensor, *, layer: str) -> Path:
    """Write an embedding (K or 1×K) for ``reference=<file>``, recording the layer it was taken at."""
    from safetensors.torch import save_file

    embedding = embedding.detach().float().cpu().reshape(-1).contiguous()
    path = Path(path)
    save_file({"embedding": embedding}, str(path), metadata={EMBEDDING_KIND: json.dumps({"layer": layer})})
    return path


def load_embedding(path: str | Path, *, layer: str, channels: int) -> Tensor:
    """A 1×K reference embedding from a file of :func:`save_embedding`, checked against FAM's layer."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    name = str(path)
    try:
        with safe_open(name, framework="pt") as f:
            header = json.loads((f.metadata() or {}).get(EMBEDDING_KIND, "{}"))
        tensors = load_file(name, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(
            f"Reference embedding {name!r} is not a readable safetensors file ({error})."
        ) from None
    embedding = tensors.get("embedding")
    if embedding is None or embedding.ndim not in (1, 2) or (embedding.ndim == 2 and embedding.shape[0] != 1):
        raise UserError(
            f"Reference embedding {name!r} holds no 'embedding' tensor of K features; write it with "
            "lficam.evaluation.pairs.save_embedding."
        )
    taken_at = header.get("layer") if isinstance(header, dict) else None
    if taken_at is not None and taken_at != layer:
        raise UserError(
            f"Reference embedding {name!r} was taken at layer {taken_at!r} but FAM explains {layer!r}: "
            f"save it at {layer!r}, or pass target_layer={taken_at}."
        )
    if embedding.numel() != channels:
        raise UserError(
            f"Reference embedding {name!r} has {embedding.numel()} features but FAM's layer {layer!r} has "
            f"{channels} channels: save it from the same model and layer."
        )
    return embedding.float().reshape(1, -1)


def explain_pairs(
    model: nn.Module,
    x: Tensor,
    images: Tensor,
    image_paths: Sequence[str],
    references: Sequence[str],
    *,
    read_images: Callable[[list[str]], Tensor],
    normalize: Callable[[Tensor], Tensor],
    out_dir: str | Path,
    similarity: str = "cosine",
    target_layer: nn.Module | str | None = None,
) -> list[Path]:
    """One picture per (image, reference) pair: the image, FAM on it, the reference, FAM on it (roles
    swapped), the similarity in the title. x: the images normalised (B×3×S×S); images: the same in [0, 1];
    read_images: file names → N×3×S×S in [0, 1]; normalize: [0, 1] → the model's input space."""
    if len(references) not in (1, len(image_paths)):
        raise UserError(
            f"reference has {len(references)} entries for {len(image_paths)} images: give one reference for "
            "all, or one per image (reference=[a_ref.jpg,b_ref.jpg])."
        )
    for name in references:
        if not Path(name).is_file():
            raise UserError(
                f"Reference {name!r} does not exist: check the path (relative paths start at {Path.cwd()})."
            )
    layer_module = resolve_target_layer(model, target_layer)
    layer = target_layer_name(model, layer_module)
    channels = pooled_features(model, x[:1], layer_module).shape[1]
    embedded = {n: load_embedding(n, layer=layer, channels=channels) for n in references if _is_embedding(n)}
    pictured = [n for n in dict.fromkeys(references) if n not in embedded]
    read = dict(zip(pictured, read_images(pictured))) if pictured else {}

    fam = cams.create("fam", model, layer_module, similarity=similarity)
    out_dir = Path(out_dir)
    written, used = [], set()
    for i, name in enumerate(image_paths):
        ref = references[0] if len(references) == 1 else references[i]
        if ref in embedded:
            pair = fam.pair(x[i : i + 1], embedded[ref].to(x.device))
            ref_panels: list[Panel] = []
        else:
            ref_image = read[ref]
            pair = fam.pair(x[i : i + 1], normalize(ref_image.unsqueeze(0)).to(x.device))
            ref_panels = [
                (ref_image, None, Path(ref).name),
                (ref_image, pair.reference_maps[0].cpu(), "FAM, roles swapped"),
            ]
        panels = [
            (images[i].cpu(), None, Path(name).name),
            (images[i].cpu(), pair.maps[0].cpu(), "FAM"),
            *ref_panels,
        ]
        file = f"{Path(name).stem}_fam_{Path(ref).stem}"
        file = file if file not in used else f"{file}_{i}"
        used.add(file)
        title = f"{Path(name).name} ↔ {Path(ref).name}: {describe_score(float(pair.score[0]), similarity)}"
        written.append(save_panel_rows(out_dir / f"{file}.png", [panels], title))
    return written


def _is_embedding(name: str) -> bool:
    return Path(name).suffix.lower() in EMBEDDING_SUFFIXES


def save_panel_rows(path: str | Path, rows: Sequence[Sequence[Panel]], title: str = "") -> Path:
    """Rows of panels, each an image or a map over it (jet, half transparent), under a title."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = max(len(r) for r in rows)
    # constrained layout leaves room for the suptitle (tight_layout lets it overlap the first row's titles)
    fig, axes = plt.subplots(
        len(rows),
        columns,
        figsize=(2.2 * columns, 2.3 * len(rows) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (image, heat, label) in enumerate(row):
            picture = image.detach().float().cpu().unsqueeze(0)
            if heat is not None:
                picture = overlay(picture, heat.detach().float().cpu().unsqueeze(0))
            axes[r, c].imshow(picture[0].permute(1, 2, 0).clamp(0, 1).numpy())
            axes[r, c].set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
