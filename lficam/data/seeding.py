"""Randomness that is a function of named inputs, never of a global random state.

A checkpoint holds no global random state, so anything random that a resumed run must repeat (a data set's
content, the training order, an augmentation) is drawn from a generator seeded by a hash of what it depends on:
the data content by (data.seed, split, index), an augmentation by (run seed, stream, epoch, index). Streams are
names (``"flip"``, ``"crop"``), turned into integers by :func:`stream_id`, so that two data sets or two kinds of
draws never share a sequence by accident.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import Dataset

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


class EpochSeededDataset(Dataset):
    """A split whose random augmentation is a function of (seed, epoch, index) only.

    Lightning's training loop calls :meth:`set_epoch` before each epoch (``LitClassifier`` does, and the data
    modules set it on workers too), so a run resumed at epoch e draws exactly what an unbroken run drew.
    ``seed`` is the run's seed (``seed=`` of train.py), not the data set's content seed: runs of a seed
    sweep see differently augmented images of the same data set.
    """

    stream = "augment"

    def __init__(self, *, seed: int = 0, augment: bool = False) -> None:
        self.seed = int(seed)
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self, index: int, stream: str | None = None) -> int:
        """A 63-bit integer for image ``index`` in this epoch: hash(seed, stream, epoch, index)."""
        return hash_seed(self.seed, stream_id(stream or self.stream), self.epoch, int(index))

    def generator(self, index: int, stream: str | None = None) -> torch.Generator:
        """A CPU generator seeded with :meth:`draw`, for ``torch.rand(..., generator=)`` style draws."""
        return torch.Generator().manual_seed(self.draw(index, stream))

    @contextmanager
    def seeded(self, index: int, stream: str | None = None) -> Iterator[None]:
        """The global CPU random state seeded with :meth:`draw` inside, restored after: for transforms
        (torchvision's) that draw from the global state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.draw(index, stream))
            yield
