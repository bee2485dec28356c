"""A data set written by ``lficam-optimize``, streamed with litdata from a folder or an object store.

The items are the source module's pixels (:mod:`lficam.data.stream_items`); this module gives them the
source's augmentation (the crop of the padded image and the flip, drawn from (run seed, epoch, index) with the
source's streams), its normalisation and its masks, so training, the attention metrics and the checkpoint's
input description are those of the source. The order is litdata's: chunks and the items within them shuffled
by (run seed, epoch); under DDP each rank reads its own share of the chunks, and ``drop_last`` gives every rank
the same number of batches. Validation and test are read map-style (:class:`EvaluationSplit`), so Lightning's
``DistributedSampler`` shares them out as it does the map-style modules'. An image folder's items keep their
own size and get its RandomResizedCrop and flip, or its resize and centre crop.

Exact resume inside an epoch: litdata's ``StreamingDataLoader`` keeps where it is (epoch, images yielded per
worker) in its ``state_dict``. Lightning stores that in the checkpoint, but drops it again when
``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (Lightning issue 20550), so this module
also keeps it in its own state (Lightning restores data modules before it builds any loader) and hands it
to the loader it builds; the loader takes the first state it is given and ignores Lightning's copy.
A resume must use the checkpoint's ``num_workers`` and batch size (litdata otherwise re-stripes the epoch).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors

from lficam.core.errors import UserError
from lficam.data.base import INPUT_KEY, ClassificationDataModule
from lficam.data.image_folder import ImageFileDataset, folder_transform
from lficam.data.in_memory import crop_and_flip, crop_and_flip_draws, normalized
from lficam.data.object_store import allow_plain_http_endpoint, exists, is_remote, read_text
from lficam.data.seeding import EpochSeededDataset
from lficam.data.stream_items import ITEM_FORMATS, METADATA_FILE, StreamMetadata, decode_item

_LOADER_KEY = "lficam_train_loader"


def read_metadata(input_dir: str) -> StreamMetadata:
    """``lficam.json`` of a streamed data set, or one sentence on why there is none."""
    where = f"{input_dir.rstrip('/')}/{METADATA_FILE}"
    if is_remote(input_dir):
        if not exists(where):
            raise UserError(
                f"{input_dir!r} holds no lficam streamed data set (no {METADATA_FILE}); write one there with "
                f"lficam-optimize data=<source> output={input_dir}."
            )
        return StreamMetadata.from_json(read_text(where), where)
    folder = Path(input_dir)
    if not folder.is_dir():
        raise UserError(
            f"data.input_dir {input_dir!r} does not exist; write a streamed data set there with "
            f"lficam-optimize data=<source> output={input_dir}, or point data.input_dir at one."
        )
    if not (folder / METADATA_FILE).is_file() or not (folder / "train" / "index.json").is_file():
        raise UserError(
            f"{input_dir!r} holds no lficam streamed data set ({METADATA_FILE} and train/index.json); write one "
            f"with lficam-optimize data=<source> output={input_dir}."
        )
    return StreamMetadata.from_json((folder / METADATA_FILE).read_text(), where)


def check_index(split_dir: str) -> int:
    """The number of images of a split (its index's count); refuse a split whose litdata index declares serialisers other than lficam's (a pickled item would run
    the writer's code when read), that has no readable index, or (in a folder) whose chunk files are missing
    or not the size the index gives them (a truncated copy, which litdata would wait on, then time out)."""
    where = f"{split_dir}/index.json"
    try:
        text = read_text(where) if is_remote(split_dir) else Path(where).read_text()
        index = json.loads(text)
        formats = set(index["config"]["data_format"])
        chunks = [(str(c["filename"]), int(c["chunk_bytes"])) for c in index["chunks"]]
    except FileNotFoundError as error:
        raise UserError(
            f"{split_dir!r} has no litdata index (index.json); write the data set again."
        ) from error
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{where} is not a litdata index ({type(error).__name__}: {error}); write the data set again."
        ) from error
    if formats - ITEM_FORMATS:
        raise UserError(
            f"{split_dir!r} stores items as {sorted(formats - ITEM_FORMATS)}, not as an lficam streamed data set "
            "does (PNG bytes and integers); write it again with lficam-optimize."
        )
    total = sum(int(c.get("chunk_size", 0)) for c in index["chunks"])
    if is_remote(split_dir):
        return total
    for name, size in chunks:
        path = Path(split_dir, name)
        found = path.stat().st_size if path.is_file() else None
        if found != size:
            state = "is missing" if found is None else f"holds {found} bytes where its index says {size}"
            raise UserError(
                f"The chunk {str(path)!r} {state} (truncated or replaced); copy the data set again or write it "
                "again with lficam-optimize."
            )
    return total


#: what litdata's reader and the PNG decoder raise on a corrupt chunk (a bad header, offsets past its end,
#: bytes that are no PNG, an item of another shape)
_DAMAGED = (
    struct.error,
    RuntimeError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    EOFError,
    OSError,
    SyntaxError,  # Pillow's, for a broken PNG chunk
    Image.DecompressionBombError,
)


def _split_dataset_class() -> type:
    from litdata import StreamingDataset  # deferred: litdata is only needed for data=streaming

    class StreamedSplit(StreamingDataset):
        """One split's chunks as model inputs: decoded, augmented like the source, normalised."""

        def __init__(
            self,
            input_dir: str,
            *,
            metadata: StreamMetadata,
            augment: bool,
            aug_seed: int,
            mean: tuple[float, float, float] | None = None,
            std: tuple[float, float, float] | None = None,
            **options: Any,
        ) -> None:
            self.total = check_index(input_dir)  # before litdata reads a chunk
            if is_remote(input_dir):
                allow_plain_http_endpoint()
            super().__init__(input_dir, **options)
            # Random access (dataset[i]: overlays, evaluation probes) by default fetches only the item's byte
            # range, which from an S3-compatible store gave empty bytes in litdata 0.2.76; whole chunks, as
            # iteration fetches them, read correctly.
            self._on_demand_bytes = False  # (its setter demands a cache, which litdata makes later)
            self.augment, self.aug_seed, self.padding = augment, aug_seed, metadata.padding
            mean, std = mean or metadata.mean, std or metadata.std  # data.mean / data.std, else the source's
            self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
            self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
            self.folder_transform = None
            self.draws = EpochSeededDataset(seed=aug_seed, augment=augment)
            if metadata.resized_crop is not None:  # an image folder's: its transform, its draws
                self.folder_transform = folder_transform(
                    augment,
                    metadata.image_size,
                    metadata.resized_crop["scale"],
                    int(metadata.resized_crop["resize_size"]),
                    mean,
                    std,
                )
                self.draws.stream = ImageFileDataset.stream

        def _damaged(self, error: Exception) -> UserError:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            return UserError(
                f"The streamed data set at {self.input_dir.path or self.input_dir.url!r} has a damaged chunk "
                f"({type(error).__name__}: {reason}); write it again with lficam-optimize."
            )

        @contextmanager
        def _chunk_errors(self) -> Iterator[None]:
            """litdata's errors of a damaged chunk as one sentence (a UserError, itself a ValueError, passes)."""
            try:
                yield
            except UserError:
                raise
            except _DAMAGED as error:
                raise self._damaged(error) from error

        # litdata checks a chunk's header when iteration starts (the first chunks) or reaches it
        def __iter__(self) -> Any:
            with self._chunk_errors():
                return super().__iter__()

        def __next__(self) -> Any:
            with self._chunk_errors():
                return super().__next__()

        def __getitem__(self, index: Any) -> dict[str, Tensor]:
            with self._chunk_errors():
                image, label, source_index, mask = decode_item(super().__getitem__(index))
            if self.folder_transform is not None:
                return self._folder_item(image, label, source_index, mask)
            if self.augment:
                # litdata counts epochs from 1, Lightning from 0: epoch e draws what the source draws in e
                offsets = crop_and_flip_draws(self.draws, source_index, self.padding, self.current_epoch - 1)
                image, mask = crop_and_flip(image, mask, *offsets, padding=self.padding)
            item = {
                "image": normalized(image, self.mean, self.std),
                "label": torch.tensor(label),
                "index": torch.tensor(source_index),
            }
            if mask is not None:
                item["mask"] = mask
            return item

        def _folder_item(
            self, image: Tensor, label: int, index: int, mask: Tensor | None
        ) -> dict[str, Tensor]:
            """An image folder's item: its transform of the stored image and mask, drawn as the source draws
            for (seed, epoch, index) (litdata counts epochs from 1, Lightning from 0)."""
            inputs: tuple[Any, ...] = (tv_tensors.Image(image),)
            if mask is not None:
                inputs += (tv_tensors.Mask(mask[None].to(torch.uint8)),)
            if self.augment:
                with self.draws.seeded(index, epoch=self.current_epoch - 1):
                    outputs = self.folder_transform(*inputs)
            else:
                outputs = self.folder_transform(*inputs)
            item = {"image": outputs[0] if mask is not None else outputs, "label": torch.tensor(label)}
            if mask is not None:
                item["mask"] = outputs[1][0].bool()
            item["index"] = torch.tensor(index)
            return item

    return StreamedSplit


class EvaluationSplit(torch.utils.data.Dataset):
    """A streamed evaluation split (``val_set``, ``test_set``) read map-style: image i of the split (litdata's
    random access by global index), all of them, for a plain DataLoader.

    litdata's iterable loader shares an evaluation split out in whole batches per rank, so under DDP a small
    split leaves a rank with none, or ranks with unequal counts, and the diagnostics' gathers then wait on each
    other. Read map-style, Lightning gives the loader a ``DistributedSampler`` as it does the map-style
    modules': every rank the same number of images and batches, each image on one rank, the split padded
    with its first images only where its size is not a multiple of the world size (as in the map-style modules).
    """

    def __init__(self, split: Any) -> None:
        self.split = split

    def __len__(self) -> int:
        return int(self.split.total)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.split[int(index)]


def _loader_class() -> type:
    from litdata import StreamingDataLoader

    class ResumableStreamingLoader(StreamingDataLoader):
        """litdata's loader, resumable under Lightning's loop.

        - It takes the first state it is given (the data module's, at creation) and ignores a second copy
          (Lightning's, when its own restore path works).
        - litdata leaves its "resuming" flag set until its iterator is run to exhaustion, and Lightning stops
          asking for batches once it has the epoch's count: every later epoch would then replay the resumed
          one's remainder. The flag is cleared as the epoch's last batch is handed out.
        - A state saved at an epoch's last batch (``every_n_epochs`` checkpoints) is a finished epoch: it only
          sets the epoch counter, so the next iteration starts the next epoch from its first batch.
        """

        restored = False

        def _epoch_samples(self) -> int:
            return len(self) * int(self.batch_size or 1)

        def load_state_dict(self, state: dict[str, Any]) -> None:
            if self.restored:
                return
            self.restored = True
            if int(state.get("num_samples_yielded", 0)) >= self._epoch_samples():
                self.current_epoch = int(state["current_epoch"])
                return
            super().load_state_dict(state)

        def __iter__(self) -> Iterator[Any]:
            end = self._epoch_samples()
            for batch in super().__iter__():
                if self._num_samples_yielded_streaming >= end:
                    self.restore = False
                yield batch

    return ResumableStreamingLoader


class StreamingDataModule(ClassificationDataModule):
    """``data=streaming data.input_dir=<folder or s3://bucket/prefix>``: a data set written by lficam-optimize.

    input_dir: where lficam-optimize wrote it. num_classes, image_size: None takes them from the data set;
    given, they must match it. mean, std: None takes the source's. augment: the source's augmentation on
    the training split (when the source augmented). cache_dir: litdata's local cache of downloaded chunks
    (None: litdata's default). max_cache_size: how much of it litdata may fill.
    """

    def __init__(
        self,
        *,
        input_dir: str,
        num_classes: int | None = None,
        image_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        augment: bool = True,
        cache_dir: str | None = None,
        max_cache_size: str = "25GB",
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if not input_dir:
            raise UserError("data=streaming needs data.input_dir=<folder or s3://bucket/prefix>.")
        self.input_dir = str(input_dir).rstrip("/")
        self.metadata = read_metadata(self.input_dir)
        found = len(self.metadata.class_names)
        if num_classes is not None and int(num_classes) != found:
            raise UserError(
                f"data.num_classes={num_classes} but the streamed data set at {self.input_dir!r} has {found} "
                f"classes; leave data.num_classes unset or write the data set again."
            )
        if image_size is not None and int(image_size) != self.metadata.image_size:
            raise UserError(
                f"data.image_size={image_size} but the streamed data set at {self.input_dir!r} holds "
                f"{self.metadata.image_size} px images; leave data.image_size unset or write it again at that size."
            )
        self.num_classes, self.class_names = found, list(self.metadata.class_names)
        self.image_size = self.metadata.image_size
        self.has_masks = any(self.metadata.masks.values())
        self.mean = tuple(mean) if mean is not None else tuple(self.metadata.mean)
        self.std = tuple(std) if std is not None else tuple(self.metadata.std)
        self.augment = augment and self.metadata.augment
        self.cache_dir, self.max_cache_size = cache_dir, max_cache_size
        self._loader_state: dict[str, Any] | None = None
        self._train_loader: Any = None

    def _split(self, split: str, *, train: bool) -> Any:
        options: dict[str, Any] = {"shuffle": train, "drop_last": train, "seed": self.shuffle_seed}
        if self.cache_dir:
            options["cache_dir"] = str(Path(self.cache_dir) / split)
        options["max_cache_size"] = self.max_cache_size
        return _split_dataset_class()(
            f"{self.input_dir}/{split}",
            metadata=self.metadata,
            mean=self.mean,
            std=self.std,
            augment=train and self.augment,
            aug_seed=self.shuffle_seed,
            **options,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._split("train", train=True)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = EvaluationSplit(self._split("val", train=False))
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = EvaluationSplit(self._split("test", train=False))

    def _loader(self, dataset: Any, *, train: bool) -> Any:
        if dataset is None:
            raise RuntimeError("The data module was used before setup(); call datamodule.setup(stage) first.")
        if not train:  # map-style, so Lightning shares it out under DDP (see EvaluationSplit)
            return super()._loader(dataset, train=False)
        from litdata.utilities.env import _DistributedEnv

        # the split may have been built before the process group was (the run reads the data module's class
        # names and image size first): the ranks are known now
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            dataset.distributed_env = _DistributedEnv.detect()
        loader = _loader_class()(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory
        )
        world = dataset.distributed_env.world_size
        if world > 1 and len(loader) == 0:
            # litdata hands each rank whole training batches (equal counts, drop_last); a rank without any
            # would leave the others waiting in every collective of the loop
            raise UserError(
                f"The streamed split {dataset.input_dir.path or dataset.input_dir.url!r} gives a rank no batch of "
                f"{self.batch_size} on {world} ranks ({len(dataset)} images here); lower data.batch_size, "
                "or use fewer devices."
            )
        if self._loader_state is not None:
            loader.load_state_dict(self._loader_state)
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The input description, and where the training loader is in its epoch (see the module's doc)."""
        state = super().state_dict()
        if self._train_loader is not None:
            state[_LOADER_KEY] = self._train_loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loader_state = state_dict.get(_LOADER_KEY)
        described = state_dict.get(INPUT_KEY) or {}
        for key, now in (("num_classes", self.num_classes), ("image_size", self.image_size)):
            then = described.get(key)
            if then is not None and int(then) != int(now):
                raise UserError(
                    f"The checkpoint was trained with {key}={then}, but the streamed data set at "
                    f"{self.input_dir!r} has {key}={now}; resume with the data set it was trained on."
                )
