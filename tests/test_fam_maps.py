"""FAM and Grad-CAM on a similarity, hand-computed on a toy embedding network whose embedding is known in
closed form: the target layer is the identity on the input, so A(x) = x and e(x) = GAP(x)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lficam import cams
from lficam.cams.fam import SimilarityGradCAM, pooled_features, similarity_score
from lficam.core.errors import UserError
from lficam.evaluation.pairs import load_embedding, save_embedding


class Embedder(nn.Module):
    """e(x) = GAP(x): no classifier; ``features`` (A = x) and ``head`` are both identities."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).mean(dim=(2, 3))


def image(*channels: list[list[float]]) -> torch.Tensor:
    return torch.tensor(channels, dtype=torch.float32).unsqueeze(0)


# e₁ = GAP(x₁) = (1, 1, 2, −1), e₂ = GAP(x₂) = (2, 1, 1, 1); ‖e₁‖ = ‖e₂‖ = √7.
X1 = image([[4, 0], [0, 0]], [[2, 2], [0, 0]], [[0, 0], [0, 8]], [[0, 0], [2, -6]])
X2 = image([[0, 0], [4, 4]], [[0, 0], [0, 4]], [[1, 1], [1, 1]], [[1, 1], [1, 1]])

# cosine: c = e₁e₂/7 = (2, 1, 2, −1)/7, Σ|c| = 6/7, ŵ = (2, 1, 2, −1)/6; the map of x₁ at (1, 0) is
# (2·0 + 0 + 2·0 − 2)/6 < 0 → ReLU 0. Score 4/7.
# euclidean: c = −(e₁ − e₂)² = −(1, 0, 1, 4), min-max over channels → ŵ = (0.75, 1, 0.75, 0). Score −6.
EXPECTED = {
    "cosine": {
        "weights": [2 / 6, 1 / 6, 2 / 6, -1 / 6],
        "map1": [[10 / 6, 2 / 6], [0.0, 22 / 6]],
        "map2": [[1 / 6, 1 / 6], [9 / 6, 13 / 6]],
        "score": 4 / 7,
    },
    "euclidean": {
        "weights": [0.75, 1.0, 0.75, 0.0],
        "map1": [[5.0, 2.0], [0.0, 6.0]],
        "map2": [[0.75, 0.75], [3.75, 7.75]],
        "score": -6.0,
    },
}


def close(actual: torch.Tensor, expected: object) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=0, atol=1e-6)


def test_the_toy_embedding_is_the_mean_of_the_input() -> None:
    close(pooled_features(Embedder(), torch.cat([X1, X2]), "features"), [[1, 1, 2, -1], [2, 1, 1, 1]])


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_fam_weights_maps_and_score_by_hand(similarity: str) -> None:
    expected = EXPECTED[similarity]
    fam = cams.create("fam", Embedder(), "features", similarity=similarity)
    e1, e2 = torch.tensor([[1.0, 1, 2, -1]]), torch.tensor([[2.0, 1, 1, 1]])
    close(fam.channel_weights(e1, e2)[0], expected["weights"])
    close(fam.channel_weights(e2, e1)[0], expected["weights"])  # symmetric in the two embeddings
    close(fam(X1, reference=X2, raw=True)[0], expected["map1"])
    close(fam(X1, reference=e2, raw=True)[0], expected["map1"])  # an embedding does the same as its image
    close(similarity_score(e1, e2, similarity), [expected["score"]])
    pair = fam.pair(X1, X2, raw=True)
    close(pair.maps[0], expected["map1"])
    close(pair.reference_maps[0], expected["map2"])
    close(pair.score, [expected["score"]])


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_the_pair_swapped_gives_the_same_maps_with_the_roles_swapped(similarity: str) -> None:
    torch.manual_seed(0)
    a, b = torch.rand(3, 5, 6, 6), torch.rand(3, 5, 6, 6)
    fam = cams.create("fam", Embedder(), "features", similarity=similarity)
    ab, ba = fam.pair(a, b), fam.pair(b, a)
    torch.testing.assert_close(ab.maps, ba.reference_maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(ab.reference_maps, ba.maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(ab.score, ba.score, rtol=0, atol=1e-6)
    # each side is FAM of that image with the other as the reference, upsampled and min-max scaled
    torch.testing.assert_close(ab.maps, fam(a, reference=b), rtol=0, atol=1e-6)
    torch.testing.assert_close(ab.reference_maps, fam(b, reference=a), rtol=0, atol=1e-6)
    assert not torch.equal(ab.maps, ab.reference_maps)


def test_one_reference_image_for_a_batch() -> None:
    fam = cams.create("fam", Embedder(), "features")
    pair = fam.pair(torch.cat([X1, X2]), X2, raw=True)
    close(pair.maps[0], EXPECTED["cosine"]["map1"])
    close(pair.reference_maps[0], EXPECTED["cosine"]["map2"])
    close(pair.score, [4 / 7, 1.0])  # x₂ against itself


def test_prototypes_table_gives_each_image_its_class_row() -> None:
    # The toy's output (its embedding, 4 numbers) stands in for 4 class scores: one prototype per "class".
    table = torch.tensor([[9.0, 0, 0, 0], [2.0, 1, 1, 1], [0.0, 1, 0, 0], [0.0, 0, 0, 1]])
    fam = cams.create("fam", Embedder(), "features", prototypes=table)
    close(fam(X1, targets=torch.tensor([1]), raw=True)[0], EXPECTED["cosine"]["map1"])
    # no targets: the predicted class, argmax (1, 1, 2, −1) = 2, whose prototype selects channel 1
    close(fam(X1, raw=True)[0], [[2.0, 2.0], [0.0, 0.0]])


def test_grad_cam_of_the_cosine_similarity_by_hand() -> None:
    # ∂cos/∂e₁ = e₂/(‖e₁‖‖e₂‖) − cos·e₁/‖e₁‖² = (7e₂ − 4e₁)/49 = (10, 3, −1, 11)/49; α = that / Z (Z = 4).
    # Map = ReLU(Σ α_k x₁^k): (0,0) 40+6, (0,1) 6, (1,0) 22, (1,1) −8 − 66 → 0, all over 196.
    cam = SimilarityGradCAM(Embedder(), "features")
    close(cam(X1, reference=X2, raw=True)[0], [[46 / 196, 6 / 196], [22 / 196, 0.0]])
    close(
        cam(X1, reference=torch.tensor([2.0, 1, 1, 1]), raw=True)[0], [[46 / 196, 6 / 196], [22 / 196, 0.0]]
    )
    assert torch.is_grad_enabled()


def test_bad_references_get_one_sentence() -> None:
    fam = cams.create("fam", Embedder(), "features")
    with pytest.raises(UserError, match=r"4×4×4 but the images are 4×2×2: resize"):
        fam(X1, reference=torch.rand(1, 4, 4, 4))
    with pytest.raises(UserError, match="resize"):
        fam.pair(X1, torch.rand(1, 4, 4, 4))
    with pytest.raises(UserError, match="3 features but the target layer has 4 channels"):
        fam(X1, reference=torch.ones(3))
    with pytest.raises(UserError, match="3 features but the target layer has 4 channels"):
        fam.pair(X1, torch.ones(3))
    with pytest.raises(UserError, match="3 reference images for 2 images"):
        fam(torch.cat([X1, X2]), reference=torch.cat([X1, X2, X1]))
    with pytest.raises(UserError, match="needs a reference"):
        fam(X1)
    three_classes = cams.create(
        "fam", _Classifier(nn.Conv2d(4, 4, 1)), "features", prototypes=torch.ones(2, 4)
    )
    with pytest.raises(UserError, match="2 class prototypes for a model with 3 classes"):
        three_classes(X1)
    with pytest.raises(UserError, match="Unknown FAM similarity 'manhattan'"):
        cams.create("fam", Embedder(), "features", similarity="manhattan")


class _Classifier(nn.Module):
    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_embedding_files_record_their_layer(tmp_path) -> None:
    path = save_embedding(tmp_path / "e.safetensors", torch.tensor([2.0, 1, 1, 1]), layer="features")
    close(load_embedding(path, layer="features", channels=4), [[2.0, 1, 1, 1]])
    with pytest.raises(UserError, match=r"taken at layer 'features' but FAM explains 'head'"):
        load_embedding(path, layer="head", channels=4)
    with pytest.raises(UserError, match="has 4 features but FAM's layer 'features' has 64 channels"):
        load_embedding(path, layer="features", channels=64)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_embedding(broken, layer="features", channels=4)
