"""Retrieval: recall@k on a gallery with a known answer, and deletion/insertion on the similarity score."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lficam import cams
from lficam.cams.fam import SimilarityGradCAM
from lficam.core.errors import UserError
from lficam.evaluation.retrieval import (
    check_task,
    embed_dataset,
    gallery_folder,
    recall_at_k,
    similarity_curve,
    similarity_faithfulness,
    top_matches,
)
from tests.test_fam_maps import Embedder

# Gallery in 2-D, with labels; cosine ranks worked out by hand:
#   q0 = (1, 0.1), class 1: g0 0.995 (0), g2 0.77 (1), g4 0.63 (2), g1 0.10 (1), g3 −0.995 (0) → first hit at 2
#   q1 = (0, 1),   class 1: g1 1.0 (1)                                                     → hit at 1
#   q2 = (−1, 0.05), class 2: g3 0.999 (0), g1 0.05 (1), g2 −0.67 (1), g4 −0.74 (2)         → first hit at 4
GALLERY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [1.0, -1.0]])
GALLERY_LABELS = torch.tensor([0, 1, 1, 0, 2])
QUERIES = torch.tensor([[1.0, 0.1], [0.0, 1.0], [-1.0, 0.05]])
QUERY_LABELS = torch.tensor([1, 1, 2])


def test_recall_at_k_on_a_gallery_with_a_known_answer() -> None:
    recall = recall_at_k(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS, (1, 2, 3, 4, 5, 10))
    assert recall == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3, 4: 1.0, 5: 1.0, 10: 1.0})
    index, score = top_matches(QUERIES, GALLERY)
    assert index.tolist() == [0, 1, 3]
    torch.testing.assert_close(score, torch.tensor([1 / math.sqrt(1.01), 1.0, 1 / math.sqrt(1.0025)]))
    with pytest.raises(UserError, match="at least one"):
        recall_at_k(QUERIES[:0], QUERY_LABELS[:0], GALLERY, GALLERY_LABELS)


# The query: channel 0 is 1 on the left half, channel 1 on the right half, so e = (0.5, 0.5); its match's
# embedding is m = (1, 0): cos = 1/√2, and the similarity depends only on the left half's channel 0.
QUERY = torch.zeros(1, 2, 4, 4)
QUERY[0, 0, :, :2] = 1.0
QUERY[0, 1, :, 2:] = 1.0
MATCH = torch.tensor([[1.0, 0.0]])
LEFT = torch.zeros(1, 4, 4)
LEFT[0, :, :2] = 1.0
RIGHT = LEFT.flip(-1)


def cos(e0: float, e1: float) -> float:
    return 0.0 if e0 == e1 == 0 else e0 / math.hypot(e0, e1)


def test_deletion_on_the_similarity_prefers_the_map_covering_what_it_depends_on() -> None:
    model = Embedder()
    # 4 pixels per step: two rows of one half. Removing the left half first: e = (0.25, 0.5), (0, 0.5), …
    fractions, good = similarity_curve(model, QUERY, MATCH, LEFT, "deletion", "features", pixels_per_step=4)
    _, bad = similarity_curve(model, QUERY, MATCH, RIGHT, "deletion", "features", pixels_per_step=4)
    torch.testing.assert_close(fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    expected_good = [cos(0.5, 0.5), cos(0.25, 0.5), cos(0, 0.5), cos(0, 0.25), 0.0]
    expected_bad = [cos(0.5, 0.5), cos(0.5, 0.25), cos(0.5, 0), cos(0.25, 0), 0.0]
    torch.testing.assert_close(good[0], torch.tensor(expected_good), rtol=0, atol=1e-6)
    torch.testing.assert_close(bad[0], torch.tensor(expected_bad), rtol=0, atol=1e-6)
    scores = {
        name: similarity_faithfulness(model, QUERY, MATCH, maps, "features", pixels_per_step=4)
        for name, maps in (("good", LEFT), ("bad", RIGHT))
    }
    trapezoid = lambda ys: sum((a + b) / 2 * 0.25 for a, b in itertools.pairwise(ys))  # noqa: E731
    assert float(scores["good"]["deletion_auc"]) == pytest.approx(trapezoid(expected_good), abs=1e-6)
    assert float(scores["bad"]["deletion_auc"]) == pytest.approx(trapezoid(expected_bad), abs=1e-6)
    assert float(scores["good"]["deletion_auc"]) < 0.25 < 0.75 < float(scores["bad"]["deletion_auc"])
    # insertion from the blurred query: pasting the left half back first raises the similarity sooner
    assert float(scores["good"]["insertion_auc"]) > float(scores["bad"]["insertion_auc"]) + 0.2
    assert float(scores["good"]["insertion"][0, -1]) == pytest.approx(cos(0.5, 0.5), abs=1e-6)

    # FAM's cosine weights are e·m: ŵ = (1, 0), so its map is channel 0, the left half, and scores as well.
    fam = cams.create("fam", model, "features")(QUERY, reference=MATCH)
    fam_scores = similarity_faithfulness(model, QUERY, MATCH, fam, "features", pixels_per_step=4)
    assert float(fam_scores["deletion_auc"]) == pytest.approx(float(scores["good"]["deletion_auc"]), abs=1e-6)
    # Grad-CAM of the cosine: ∂cos/∂e = (m − cos·e/‖e‖)/‖e‖ ∝ (0.5, −0.5): the left half again.
    gradcam = SimilarityGradCAM(model, "features")(QUERY, reference=MATCH)
    torch.testing.assert_close(gradcam, LEFT)

    flat = similarity_curve(model, QUERY, MATCH, torch.zeros(1, 4, 4), "deletion", "features")[1]
    assert flat.isnan().all()


def test_gallery_folder_and_its_mistakes(tmp_path) -> None:
    names = ["circle", "square"]
    for name, colour in (("square", 255), ("circle", 0)):
        (tmp_path / "g" / name).mkdir(parents=True)
        Image.fromarray(np.full((10, 12, 3), colour, np.uint8)).save(tmp_path / "g" / name / "a.png")
    gallery = gallery_folder(tmp_path / "g", names, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    embeddings, labels = embed_dataset(Embedder(), gallery, "features")
    assert labels.tolist() == [0, 1]  # by class name, not folder order
    torch.testing.assert_close(
        embeddings, torch.tensor([[-2.0] * 3, [2.0] * 3])
    )  # (0 − .5)/.25, (1 − .5)/.25
    (tmp_path / "g" / "cat").mkdir()
    with pytest.raises(UserError, match=r"class folders \['cat'\] but the model's classes"):
        gallery_folder(tmp_path / "g", names, 8, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(UserError, match="neither 'train' nor a folder"):
        gallery_folder(tmp_path / "missing", names, 8, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(UserError, match=r"Unknown eval\.task 'detection'"):
        check_task("detection")
