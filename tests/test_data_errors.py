"""A bad file read in a data-loader worker reads as it does without workers: one sentence, exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lficam.core.errors import UserError
from lficam.data import ImageFolderDataModule
from tests.conftest import ROOT, run_quietly
from tests.test_data_real import write_image_folder


class _Refuses(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 3:
            raise UserError(f"Cannot read image 'x/{index}.png' (a reason); remove or replace the file.")
        return torch.zeros(1)


def test_a_workers_user_error_keeps_its_sentence() -> None:
    with pytest.raises(UserError) as error:
        list(DataLoader(_Refuses(), num_workers=2))
    assert str(error.value) == "Cannot read image 'x/3.png' (a reason); remove or replace the file."


@pytest.mark.slow
def test_broken_image_with_workers_is_one_sentence(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data")
    broken = tmp_path / "data" / "train" / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    data = ImageFolderDataModule(tmp_path / "data", num_classes=2, image_size=16)
    data.setup("fit")
    with pytest.raises(UserError) as error:  # what num_workers=0 says
        data.train_set[[p for p, _ in data.train_set.samples].index(broken)]
    sentence = str(error.value)

    done = run_quietly(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "data=image_folder",
            f"data.root={tmp_path / 'data'}",
            "data.num_classes=2",
            "data.image_size=16",
            "data.batch_size=1",  # every image is read: none falls in a dropped incomplete batch
            "data.num_workers=2",
            "trainer.max_epochs=1",
            "test=false",
            "callbacks.progress_bar=null",
            "callbacks.model_summary=null",
            "callbacks.attention_overlays=null",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert sentence in output, output[-3000:]
    assert "Traceback" not in output and "worker process" not in output, output[-3000:]
