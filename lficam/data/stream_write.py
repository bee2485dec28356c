"""Write a data module's three splits as litdata chunks, to a folder or an object store (``lficam-optimize``).

Each split is written in this process, in the source's order, with litdata's ``BinaryWriter`` (the same
chunks on every run; litdata's ``optimize`` would spread the work over processes that each rebuild the
source). For ``s3://`` the chunks are written to a temporary folder first and then uploaded with boto3,
which reads the endpoint and the credentials from the usual ``AWS_*`` environment variables; nothing of them
is written anywhere.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from lficam.core.errors import UserError, os_error_reason
from lficam.data.image_folder import ImageFolderDataModule
from lficam.data.object_store import is_remote, upload_folder
from lficam.data.stream_items import (
    METADATA_FILE,
    SPLITS,
    StreamMetadata,
    encode_item,
    has_masks,
    source_items,
)

log = logging.getLogger("lficam")


def write_streamed(datamodule: Any, output: str, *, chunk_bytes: str = "64MB") -> StreamMetadata:
    """Write ``datamodule``'s train/val/test splits and their metadata under ``output``; returns the metadata."""
    datamodule.setup(None)
    splits = {"train": datamodule.train_set, "val": datamodule.val_set, "test": datamodule.test_set}
    train = splits["train"]
    metadata = StreamMetadata(
        class_names=[str(c) for c in datamodule.class_names],
        mean=[float(v) for v in datamodule.mean],
        std=[float(v) for v in datamodule.std],
        image_size=int(datamodule.input_size or next(source_items(train))[0].shape[-1]),
        padding=int(getattr(train, "padding", 0)),
        augment=bool(getattr(train, "augment", False)),
        source=f"{type(datamodule).__module__}.{type(datamodule).__name__}",
    )
    if isinstance(datamodule, ImageFolderDataModule):
        metadata.resized_crop = {
            "scale": [float(v) for v in datamodule.scale],
            "resize_size": datamodule.resize_size,
        }
    if is_remote(output):
        with tempfile.TemporaryDirectory(prefix="lficam-optimize-") as staging:
            _write_local(splits, Path(staging), metadata, chunk_bytes)
            upload_folder(Path(staging), output)
    else:
        folder = Path(output)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(
                f"Cannot create the output folder {output!r} ({os_error_reason(error)})."
            ) from error
        if any((folder / split / "index.json").exists() for split in SPLITS):
            raise UserError(
                f"{output!r} already holds a streamed data set; choose an empty output or remove it first."
            )
        _write_local(splits, folder, metadata, chunk_bytes)
    return metadata


def _write_local(splits: dict[str, Any], folder: Path, metadata: StreamMetadata, chunk_bytes: str) -> None:
    from litdata.streaming.writer import BinaryWriter  # deferred: only this command writes chunks

    for split in SPLITS:
        dataset = splits[split]
        masks = has_masks(dataset)
        writer = BinaryWriter(str(folder / split), chunk_bytes=chunk_bytes)
        count = 0
        for image, label, index, mask in source_items(dataset):
            writer.add_item(count, encode_item(image, label, index, mask if masks else None))
            count += 1
        writer.done()
        writer.merge()
        metadata.masks[split], metadata.sizes[split] = masks, count
        log.info("Wrote %d %s images to %s.", count, split, folder / split)
    (folder / METADATA_FILE).write_text(metadata.to_json())
