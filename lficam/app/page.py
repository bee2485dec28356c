"""The explorer's page (Streamlit): ``lficam-app <checkpoint | run folder | sweep folder>`` serves it.

Streamlit runs this script from the top on every interaction; what is slow is cached across those runs: the
target and each :class:`~lficam.app.explorer.Explorer` (a model loaded once) with ``st.cache_resource``, and
the maps inside the explorer. Every number comes from :mod:`lficam.app.explorer`, that is from
:mod:`lficam.evaluation`; this file only lays them out. A mistake (a bad path, an unreadable upload) is one
sentence in the page, never a traceback.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pandas as pd
import streamlit as st
import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.app.explorer import PAGE_METHODS, Explorer, Sample, Sweep, Target, grid_png, resolve_target
from lficam.app.launch import DATA_DIR_VARIABLE, TARGET_VARIABLE
from lficam.core.errors import UserError
from lficam.core.pictures import overlay
from lficam.evaluation.maps import OWN
from lficam.evaluation.scores import METRIC_NAMES, METRICS, arrow

METHOD_LABELS = {OWN: "own map"}


@st.cache_resource(show_spinner="Finding the checkpoints…")
def cached_target(path: str) -> Target:
    return resolve_target(path)


@st.cache_resource(show_spinner="Loading the model…", max_entries=16)
def cached_explorer(checkpoint: str, data_dir: str | None) -> Explorer:
    return Explorer(checkpoint, data_dir=data_dir)


def picture(tensor: Tensor) -> np.ndarray:
    """3×H×W in [0, 1] → H×W×3 uint8, as st.image takes it."""
    return (tensor.detach().float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def with_outline(display: Tensor, mask: Tensor | None) -> Tensor:
    """The image with its object mask's outline drawn in green (the pixels of the mask next to background)."""
    if mask is None:
        return display
    inside = (mask > 0.5).float()[None, None]
    eroded = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    edge = (inside - eroded)[0, 0] > 0
    drawn = display.clone()
    drawn[:, edge] = torch.tensor([0.0, 1.0, 0.0]).view(3, 1)
    return drawn


def over(sample: Sample, maps: Tensor) -> np.ndarray:
    return picture(overlay(sample.display.unsqueeze(0), maps.unsqueeze(0))[0])


def label_of(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def target_path() -> str:
    """The path lficam-app was opened on (its environment variable; ``streamlit run page.py -- <path>`` too),
    or the one typed into the sidebar."""
    default = os.environ.get(TARGET_VARIABLE) or (sys.argv[1] if len(sys.argv) > 1 else "")
    return st.sidebar.text_input("checkpoint, run folder or sweep folder", value=default).strip()


def choose_sample(explorer: Explorer) -> Sample | None:
    """The image chosen in the sidebar: a test image (filtered by class) or an upload."""
    sources = ["test split", "upload"] if explorer.test_set is not None else ["upload"]
    if sources == ["upload"]:
        st.sidebar.info("This checkpoint records no data set (an export): upload an image.")
    source = st.sidebar.radio("images", sources, horizontal=True)
    if source == "upload":
        file = st.sidebar.file_uploader("an image", type=["png", "jpg", "jpeg", "webp", "bmp"])
        return explorer.upload(file.name, file.getvalue()) if file is not None else None
    labels = explorer.test_labels()
    wanted = st.sidebar.selectbox("class", ["all classes", *explorer.class_names])
    if wanted == "all classes":
        indices = list(range(len(explorer.test_set)))
    else:
        indices = (labels == explorer.class_names.index(wanted)).nonzero().flatten().tolist()
    if not indices:
        st.sidebar.warning(f"No test image of class {wanted}.")
        return None
    position = st.sidebar.number_input(f"image (1–{len(indices)})", 1, len(indices), 1, step=1)
    return explorer.test_image(indices[int(position) - 1])


def show_maps(explorer: Explorer, sample: Sample, methods: list[str]) -> dict[str, Tensor]:
    """The image and each chosen method's map over it, side by side, with the prediction."""
    prediction = explorer.predict(sample)
    truth = explorer.class_names[sample.label] if sample.label is not None else "unknown (an upload)"
    st.markdown(f"**predicted:** {prediction.name} ({prediction.probability:.1%}) · **true class:** {truth}")
    started = time.perf_counter()
    maps = {m: explorer.map(sample, m) for m in methods}
    elapsed = time.perf_counter() - started
    columns = st.columns(len(methods) + 1)
    columns[0].image(picture(with_outline(sample.display, sample.mask)), caption="image", width="stretch")
    for column, (method, m) in zip(columns[1:], maps.items()):
        column.image(over(sample, m), caption=label_of(method), width="stretch")
    st.caption(f"maps ready in {elapsed:.2f} s (computed once per image and method, then cached)")
    return maps


def show_scores(explorer: Explorer, sample: Sample, methods: list[str]) -> None:
    """Each map's scores on this image, and its deletion and insertion curves."""
    rows, deletion, insertion = {}, {}, {}
    for method in methods:
        scores = explorer.scores(sample, method)
        rows[label_of(method)] = scores.values
        if scores.curves:
            fractions = scores.curves["fractions"].numpy()
            deletion[label_of(method)] = pd.Series(scores.curves["deletion"][0].numpy(), index=fractions)
            insertion[label_of(method)] = pd.Series(scores.curves["insertion"][0].numpy(), index=fractions)
    table = pd.DataFrame(rows)  # metrics as rows: put them in eval.py's order, then name them
    table = table.loc[[m for m in METRICS if m in table.index]]
    table.index = [f"{METRIC_NAMES[m]} {arrow(m)}" for m in table.index]
    st.dataframe(table.style.format("{:.3f}", na_rep="–"), width="stretch")
    if sample.mask is None:
        st.caption("No object mask for this image: the pointing game and mask IoU need one.")
    left, right = st.columns(2)
    left.markdown(
        "**deletion** (probability of the class as pixels go, most important first; lower is better)"
    )
    left.line_chart(pd.DataFrame(deletion))
    right.markdown("**insertion** (as pixels come back; higher is better)")
    right.line_chart(pd.DataFrame(insertion))


def show_fam(explorer: Explorer, sample: Sample) -> None:
    """FAM: this image against its class prototype (or FC row), or against another test image."""
    choices = (
        ["class prototype", "another test image"] if explorer.test_set is not None else ["class prototype"]
    )
    reference = st.radio("reference", choices, horizontal=True, key="fam_reference")
    if reference == "class prototype":
        maps, description = explorer.reference_map(sample)
        st.image(over(sample, maps), caption=f"FAM against {description}", width=240)
        return
    other = st.number_input(
        f"reference test image (1–{len(explorer.test_set)})", 1, len(explorer.test_set), 2
    )
    ref = explorer.test_image(int(other) - 1)
    mine, theirs, similarity = explorer.fam_pair(sample, ref)
    left, right = st.columns(2)
    left.image(over(sample, mine), caption="FAM on this image", width="stretch")
    right.image(over(ref, theirs), caption=f"FAM on test image {int(other)} (roles swapped)", width="stretch")
    st.metric("cosine similarity of the embeddings", f"{similarity:.3f}")


def show_across_runs(sweep: Sweep, sample: Sample) -> None:
    """The same image's own map in every run, and the pairwise IoU and Spearman's ρ (the stability claim)."""
    compared = sweep.across_runs(sample)
    columns = st.columns(min(len(compared.maps), 6))
    for i, (name, m) in enumerate(zip(compared.names, compared.maps)):
        columns[i % len(columns)].image(over(sample, m), caption=name, width="stretch")
    left, right = st.columns(2)
    left.markdown("**IoU** at > 100/255 of each map's range")
    left.dataframe(
        pd.DataFrame(compared.iou.numpy(), index=compared.names, columns=compared.names).style.format(
            "{:.3f}"
        )
    )
    right.markdown("**Spearman's ρ** of the maps' pixels")
    right.dataframe(
        pd.DataFrame(compared.spearman.numpy(), index=compared.names, columns=compared.names).style.format(
            "{:.3f}"
        )
    )


def main() -> None:
    st.set_page_config(page_title="lficam explorer", layout="wide")
    st.title("lficam explorer")
    path = target_path()
    if not path:
        st.info("Give a checkpoint, a run folder or a sweep folder in the sidebar.")
        return
    try:
        target = cached_target(path)
        run = 0
        if len(target.checkpoints) > 1:
            run = st.sidebar.selectbox("run", range(len(target.names)), format_func=lambda i: target.names[i])
        explorer = cached_explorer(str(target.checkpoints[run]), os.environ.get(DATA_DIR_VARIABLE))
        st.caption(f"{target.kind}: {target.path} · checkpoint {target.checkpoints[run]}")
        sample = choose_sample(explorer)
        options = [OWN, *PAGE_METHODS]
        methods = st.sidebar.multiselect("methods", options, default=[OWN, "gradcam"], format_func=label_of)
        if sample is None or not methods:
            st.info("Choose an image and at least one method.")
            return
        maps = show_maps(explorer, sample, methods)
        st.download_button(
            "download this row as PNG",
            grid_png(sample.display, {label_of(m): v for m, v in maps.items()}),
            file_name=f"{sample.key.replace(':', '_')}.png",
            mime="image/png",
        )
        st.subheader("scores of each map on this image")
        show_scores(explorer, sample, methods)
        # a toggle, not an expander: an expander's content is computed even while it is closed, and FAM's
        # class prototypes cost a pass over the training images (cached on disk after the first time)
        if st.toggle("FAM: why is this image similar to a reference?", key="fam"):
            show_fam(explorer, sample)
        if len(target.checkpoints) > 1:
            st.subheader(f"the same image across the {len(target.checkpoints)} runs")
            show_across_runs(
                Sweep(target, lambda c: cached_explorer(c, os.environ.get(DATA_DIR_VARIABLE))), sample
            )
    except UserError as error:
        st.error(str(error))


main()
