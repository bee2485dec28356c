"""Class prototypes: the mean embedding of the first N training images of each class, and their cache."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open

from lficam.core.errors import UserError
from lficam.evaluation.prototypes import KIND, cache_path, cached_prototypes, class_prototypes, dataset_labels
from tests.test_fam_maps import Embedder


class Items(torch.utils.data.Dataset):
    """Items as the data modules give them; counts how often an image is read."""

    def __init__(self, images: torch.Tensor, labels: list[int]) -> None:
        self.images, self.labels_list, self.reads = images, labels, 0

    def __len__(self) -> int:
        return len(self.labels_list)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.reads += 1
        return {"image": self.images[i], "label": torch.tensor(self.labels_list[i])}


LABELS = [0, 1, 1, 0, 2, 1, 0, 1]


@pytest.fixture
def dataset() -> Items:
    torch.manual_seed(0)
    return Items(torch.rand(len(LABELS), 4, 3, 3), LABELS)


def test_prototypes_are_the_mean_embedding_of_the_first_n_images_per_class(dataset: Items) -> None:
    table, counts = class_prototypes(Embedder(), dataset, 3, 2, "features", batch_size=3)
    e = dataset.images.mean(dim=(2, 3))  # the toy's embedding, computed here
    expected = torch.stack([(e[0] + e[3]) / 2, (e[1] + e[2]) / 2, e[4]])  # class 2 has one image
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-6)
    assert counts.tolist() == [2, 2, 1]
    assert dataset_labels(dataset).tolist() == LABELS
    with pytest.raises(UserError, match="no image of class 3"):
        class_prototypes(Embedder(), dataset, 4, 2, "features")
    with pytest.raises(UserError, match="at least 1"):
        class_prototypes(Embedder(), dataset, 3, 0, "features")


def test_cached_beside_the_checkpoint_with_what_made_it_and_revalidated(
    dataset: Items, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"weights v1")
    data = {"_target_": "lficam.data.ShapesDataModule", "seed": 0, "image_size": 3, "batch_size": 64}
    calls = []

    def get(n: int = 2, layer: str = "features", data_config: dict = data):
        return cached_prototypes(
            checkpoint,
            Embedder(),
            per_class=n,
            data_config=data_config,
            dataset=lambda: calls.append(1) or dataset,
            num_classes=3,
            target_layer=layer,
        )

    first = get()
    assert not first.reused and len(calls) == 1
    assert first.path == cache_path(checkpoint, "features", 2, data)
    assert first.path.parent == tmp_path and first.path.name.startswith("best.ckpt.fam-prototypes-")
    with safe_open(str(first.path), framework="pt") as f:
        made_by = json.loads(f.metadata()[KIND])
        assert set(f.keys()) == {"prototypes", "counts"}
    assert made_by["per_class"] == 2 and made_by["layer"] == "features"
    assert made_by["data"] == {"_target_": "lficam.data.ShapesDataModule", "image_size": 3, "seed": 0}
    assert len(made_by["checkpoint_sha256"]) == 64 and made_by["checkpoint_mtime"] > 0

    again = get(data_config={**data, "batch_size": 8, "num_workers": 2})  # loader options do not matter
    assert again.reused and len(calls) == 1
    torch.testing.assert_close(again.table, first.table)

    assert not get(n=1).reused and len(calls) == 2  # another N: another file
    assert not get(layer="head").reused and len(calls) == 3  # another layer
    assert not get(data_config={**data, "seed": 1}).reused and len(calls) == 4  # other images

    checkpoint.write_bytes(b"weights v2")  # retrained: same file name, other content
    with caplog.at_level(logging.INFO, logger="lficam"):
        assert not get().reused and len(calls) == 5
    assert "another checkpoint" in caplog.text
    assert get().reused and len(calls) == 5

    first.path.write_bytes(b"garbage")  # a broken cache is recomputed, not trusted
    with caplog.at_level(logging.WARNING, logger="lficam"):
        recomputed = get()
    assert not recomputed.reused and "unreadable" in caplog.text
    torch.testing.assert_close(recomputed.table, first.table)
