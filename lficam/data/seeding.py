"""Randomness that is a function of named inputs, never of a global random state.

A checkpoint holds no global random state, so anything random that a resumed run must repeat (a data set's
content, the training order, an augmentation) is drawn from a generator seeded by a hash of what it depends on:
the data content by (data.seed, split, index), the training order by (run seed, epoch), an augmentation by
(run seed, stream, epoch, index). Streams are names (``"flip"``, ``"crop"``, ``"order"``), turned into integers
by :func:`stream_id`, so that two data sets or two kinds of draws never share a sequence by accident.

The epoch reaches data-loader workers inside the indices: :class:`EpochShuffleSampler` yields
:class:`EpochIndex` values (an ``int`` that also carries the epoch it was drawn for), and
:class:`EpochSeededDataset` draws with that epoch. A worker's copy of the data set is made when the worker
starts and, with ``persistent_workers``, never sees a later :meth:`~EpochSeededDataset.set_epoch` of the main
process; an index that carries its epoch needs no such message, so what image ``i`` of epoch ``e`` looks like
does not depend on which process renders it or when.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import Dataset, DistributedSampler

_MASK = (1 << 64) - 1
# Odd 64-bit constants (golden ratio and splitmix64's), one per position of the hashed tuple.
_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD1B54A32D192ED03)


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from up to four integers, the same on every platform and Python (no ``hash``).

    x = Σ_i parts_i · K_i mod 2⁶⁴, then one splitmix64-style finalising round. For three parts it is the
    formula the shapes data set has always used, so its images do not change.
    """
    if not 1 <= len(parts) <= len(_MULTIPLIERS):
        raise ValueError(f"hash_seed takes 1 to {len(_MULTIPLIERS)} integers, got {len(parts)}")
    x = sum(int(p) * k for p, k in zip(parts, _MULTIPLIERS)) & _MASK
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & _MASK
    return x >> 1


def stream_id(name: str) -> int:
    """A stable integer for a stream's name (CRC-32), in place of hand-picked offsets."""
    return zlib.crc32(name.encode())


class EpochIndex(int):
    """An index into a data set that also says which epoch it was drawn for (``.epoch``).

    It is an ``int`` everywhere else (tensor indexing, ``Subset``, collation), so a data set that knows
    nothing of epochs reads it as the plain index. It survives the pickling that sends indices to workers.
    """

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        value = super().__new__(cls, index)
        value.epoch = int(epoch)
        return value

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return EpochIndex, (int(self), self.epoch)

    def __repr__(self) -> str:
        return f"EpochIndex({int(self)}, epoch={self.epoch})"


class EpochShuffleSampler(DistributedSampler):
    """A random order of ``range(size)`` that is a function of (seed, epoch) only, as :class:`EpochIndex`.

    PyTorch's ``RandomSampler`` draws its order from the global random state, which a checkpoint does not
    hold. Here epoch e's order is ``randperm(size)`` under a generator seeded with hash(seed, "order", e)
    (a hash, not ``seed + e``: the runs of a seed sweep never share an epoch's order). Lightning calls
    :meth:`set_epoch` at the start of every training epoch; the epoch is read when iteration starts.

    Under DDP, rank r of n takes every n-th index of the same order, padded like PyTorch's
    ``DistributedSampler`` to a multiple of n. It is one, so that Lightning keeps it instead of swapping in
    its own sampler, and the order stays a function of this run's seed on any number of devices.

    ``position``, when given, is asked as each iteration starts how many of this rank's indices of the epoch
    were trained on already (a run resumed from a checkpoint taken inside the epoch); they are skipped, so the
    rest of the epoch is what an unbroken run draws. The order itself does not change.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        position: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size = size
        self.position = position

    def __iter__(self) -> Iterator[EpochIndex]:
        epoch = self.epoch
        generator = torch.Generator().manual_seed(hash_seed(self.seed, stream_id("order"), epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.size and len(order) < self.total_size:  # pad with the order's own start, as PyTorch does
            order = (order * math.ceil(self.total_size / self.size))[: self.total_size]
        start = self.position() if self.position is not None else 0
        mine = order[self.rank : self.total_size : self.num_replicas]
        return (EpochIndex(i, epoch) for i in mine[start:])


class EpochSeededDataset(Dataset):
    """A split whose random augmentation is a function of (seed, epoch, index) only.

    The epoch is the one the index carries (:class:`EpochIndex`, from :class:`EpochShuffleSampler`), else
    the last :meth:`set_epoch` (direct access, ``first_items``, other samplers; ``LitClassifier`` sets it
    each training epoch). So a run resumed at epoch e draws exactly what an unbroken run drew, with any
    number of data-loader workers, persistent or not. ``seed`` is the run's seed (``seed=`` of train.py),
    not the data set's content seed: runs of a seed sweep see differently augmented images of the same data.
    """

    stream = "augment"

    def __init__(self, *, seed: int = 0, augment: bool = False) -> None:
        self.seed = int(seed)
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_of(self, index: int) -> int:
        """The epoch image ``index`` is drawn for: the one it carries, else :meth:`set_epoch`'s."""
        return getattr(index, "epoch", self.epoch)

    def draw(self, index: int, stream: str | None = None, *, epoch: int | None = None) -> int:
        """A 63-bit integer for image ``index``: hash(seed, stream, epoch, index), the epoch by default
        :meth:`epoch_of` ``index`` (pass ``epoch`` when the hashed id is not the index that came in)."""
        epoch = self.epoch_of(index) if epoch is None else epoch
        return hash_seed(self.seed, stream_id(stream or self.stream), epoch, int(index))

    def generator(
        self, index: int, stream: str | None = None, *, epoch: int | None = None
    ) -> torch.Generator:
        """A CPU generator seeded with :meth:`draw`, for ``torch.rand(..., generator=)`` style draws."""
        return torch.Generator().manual_seed(self.draw(index, stream, epoch=epoch))

    @contextmanager
    def seeded(self, index: int, stream: str | None = None, *, epoch: int | None = None) -> Iterator[None]:
        """The global CPU generator seeded with :meth:`draw` inside, restored after: for transforms
        (torchvision's) that draw from the global state. Only the CPU generator: ``torch.manual_seed`` also
        queues a seed for every CUDA device and records a stack trace each time (about 1 ms an image on a
        CPU), and those transforms draw from the CPU generator alone."""
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.draw(index, stream, epoch=epoch))
            yield
