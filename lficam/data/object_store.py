"""The few object-store operations the streamed data sets need beyond litdata's reader: upload a written data
set, read its metadata file. boto3 takes the endpoint and credentials from the usual ``AWS_*`` environment
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), as
litdata's reader does; they are never passed as config values, so no run folder, config snapshot or log holds
them. Failures are one sentence: the store cannot be reached, refuses the credentials, or lacks the object.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lficam.core.errors import UserError


def is_remote(path: str) -> bool:
    return str(path).startswith("s3://")


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` → (bucket, ``prefix``)."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise UserError(f"{url!r} names no bucket; write s3://<bucket>/<prefix>.")
    return bucket, prefix.strip("/")


def _client() -> Any:
    import boto3  # deferred: only object-store paths need it
    from botocore.config import Config

    # few retries: an unreachable endpoint is a user's mistake to report, not to wait out for minutes
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    # a new session each time: boto3's default session keeps the credentials it first read
    return boto3.session.Session().client("s3", config=config)


def store_error(error: Exception, url: str) -> UserError:
    """One sentence for a failed object-store call on ``url``."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
    if isinstance(error, EndpointConnectionError):
        return UserError(
            f"Cannot reach the object store at {endpoint} for {url!r}; check AWS_ENDPOINT_URL and that the "
            "store is running."
        )
    if isinstance(error, NoCredentialsError):
        return UserError(f"No credentials for {url!r}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"}:
            return UserError(
                f"The object store at {endpoint} refused the credentials for {url!r} ({code}); check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
            )
        if code in {"NoSuchKey", "404", "NoSuchBucket", "NotFound"}:
            return UserError(f"{url!r} does not exist in the object store at {endpoint} ({code}).")
        return UserError(f"The object store at {endpoint} refused {url!r} ({code or error}).")
    return UserError(f"The object store at {endpoint} failed on {url!r} ({type(error).__name__}: {error}).")


def _guarded(url: str, call: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except (BotoCoreError, ClientError) as error:
        raise store_error(error, url) from error


def read_text(url: str) -> str:
    """The text of the object at ``s3://bucket/key``."""
    bucket, key = split_url(url)
    client = _client()
    response = _guarded(url, lambda: client.get_object(Bucket=bucket, Key=key))
    return response["Body"].read().decode("utf-8")


def exists(url: str) -> bool:
    """Whether the object ``s3://bucket/key`` exists (other failures are one sentence)."""
    from botocore.exceptions import ClientError

    bucket, key = split_url(url)
    client = _client()
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise store_error(error, url) from error
    except Exception as error:
        from botocore.exceptions import BotoCoreError

        if isinstance(error, BotoCoreError):
            raise store_error(error, url) from error
        raise
    return True


def upload_folder(folder: Path, url: str) -> None:
    """Upload every file under ``folder`` to ``url`` (``s3://bucket/prefix``), keeping relative paths."""
    bucket, prefix = split_url(url)
    client = _client()
    if _guarded(url, lambda: client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", MaxKeys=1)).get(
        "KeyCount"
    ):
        raise UserError(f"{url!r} already holds objects; choose an empty prefix or remove them first.")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = "/".join(filter(None, (prefix, path.relative_to(folder).as_posix())))
        _guarded(url, lambda path=path, key=key: client.upload_file(str(path), bucket, key))


def allow_plain_http_endpoint() -> None:
    """Let litdata's obstore downloads use an ``http://`` endpoint (a store on this machine or a private network).

    litdata 0.2.76 builds obstore's S3 store with the endpoint of its boto3 client but without obstore's
    ``allow_http``, so every chunk download from an ``http://`` endpoint fails ("BadScheme"); boto3 itself
    accepts one. Its client options are one module-level dict, read when a store is built (in each worker,
    which inherits this process's copy on fork).
    """
    if not os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        return
    from litdata.streaming import downloader

    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options["allow_http"] = True
