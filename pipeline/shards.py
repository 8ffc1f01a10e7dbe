"""The preprocess step's output as the later steps read it: uint8 `.npy` shards per split and meta.json."""

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np


def read_meta(folder: Path) -> dict:
    """The shard folder's meta.json: key, classes, geometry, train mean/std, shard files per split.

    Args:
        folder: The preprocess step's output folder.

    Returns:
        The parsed meta.json.
    """
    return json.loads((folder / "meta.json").read_text())


class NpyLayout(NamedTuple):
    """Where a .npy file's array is: its shape and the byte offset its data starts at."""

    shape: tuple[int, ...]
    offset: int


class SplitArrays(NamedTuple):
    """A whole split as model inputs: float32 images (N, size, size, channels) in [0, 1] and integer labels."""

    images: np.ndarray
    labels: np.ndarray


def _npy_layout(path: Path) -> NpyLayout:
    """Shape and data offset of a C-ordered uint8 .npy file, from its header."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran or dtype != np.uint8:
            raise ValueError(f"{path}: not a C-ordered uint8 shard")
        return NpyLayout(shape, f.tell())


class Shards:
    """One split's uint8 shards: any images by positioned file reads (no memory map, so a split of any
    size never counts toward the process's memory), or the whole split at once."""

    def __init__(self, folder: Path, split: str) -> None:
        meta = read_meta(folder)
        entry = meta["splits"][split]
        self.files = [folder / f for f in entry["shards"]]
        self.shape = (meta["size"], meta["size"], meta["channels"])
        layouts = [_npy_layout(f) for f in self.files]
        self.offsets = [layout.offset for layout in layouts]
        self.ends = np.cumsum([layout.shape[0] for layout in layouts], dtype=np.int64)
        self.labels = np.load(folder / entry["labels"], allow_pickle=False)
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    @property
    def nbytes(self) -> int:
        """Size of the whole split in memory."""
        return len(self) * int(np.prod(self.shape))

    def take(self, index: np.ndarray | list[int]) -> np.ndarray:
        """The images at these positions, uint8 (len(index), size, size, channels).

        Args:
            index: Positions in the split.

        Returns:
            The images, in the order of `index`.
        """
        index = np.asarray(index, dtype=np.int64)
        row = int(np.prod(self.shape))
        part = np.searchsorted(self.ends, index, side="right")
        starts = np.concatenate([[0], self.ends[:-1]])
        chunks = []
        for p, i in zip(part.tolist(), (index - starts[part]).tolist()):
            if p not in self._fds:
                self._fds[p] = os.open(self.files[p], os.O_RDONLY)
            chunks.append(os.pread(self._fds[p], row, self.offsets[p] + i * row))
        return np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(len(index), *self.shape)

    def read(self) -> np.ndarray:
        """The whole split in memory, uint8.

        Returns:
            (N, size, size, channels) uint8; empty with that geometry when the split has no shards.
        """
        parts = [np.load(f, allow_pickle=False) for f in self.files]
        return np.concatenate(parts) if parts else np.zeros((0, *self.shape), dtype=np.uint8)


def load_split(folder: Path, split: str) -> SplitArrays:
    """A whole split as model inputs: float32 (N, size, size, channels) in [0, 1], and integer labels.

    Args:
        folder: The preprocess step's output folder.
        split: `train`, `val` or `test`.

    Returns:
        The images and their labels.
    """
    shards = Shards(folder, split)
    return SplitArrays(shards.read().astype(np.float32) / 255.0, shards.labels)


class ArrayShards:
    """A split held as one uint8 array, read like Shards (take, read, labels): for training on arrays that
    are already in memory (benchmarks, notebooks) through the same input pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, h, w, c), got {images.dtype} {images.shape}")
        self.images, self.labels = images, np.asarray(labels)
        self.shape = images.shape[1:]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        """Size of the whole split in memory."""
        return int(self.images.nbytes)

    def take(self, index: np.ndarray | list[int]) -> np.ndarray:
        """The images at these positions (a copy).

        Args:
            index: Positions in the split.

        Returns:
            uint8 (len(index), h, w, c).
        """
        return self.images[np.asarray(index, dtype=np.int64)]

    def read(self) -> np.ndarray:
        """The whole split (the array itself).

        Returns:
            uint8 (N, h, w, c).
        """
        return self.images


class JoinedShards:
    """One split followed by some images of another with labels of their own, read like Shards (take, read,
    labels, shape, nbytes): position len(train) + k is pool image picked[k] (pseudo-labelling's student)."""

    def __init__(
        self, train: Shards | ArrayShards, pool: Shards | ArrayShards, picked: np.ndarray, labels: np.ndarray
    ) -> None:
        self.train, self.pool, self.picked = train, pool, np.asarray(picked, dtype=np.int64)
        self.labels = np.concatenate([np.asarray(train.labels, dtype=np.int64), np.asarray(labels, dtype=np.int64)])
        self.shape = tuple(train.shape)

    def __len__(self) -> int:
        return len(self.train) + len(self.picked)

    @property
    def nbytes(self) -> int:
        """Size of the joined split in memory."""
        return len(self) * int(np.prod(self.shape))

    def take(self, index: np.ndarray | list[int]) -> np.ndarray:
        """The images at these positions, uint8, in the order of `index`.

        Args:
            index: Positions in the joined split.

        Returns:
            uint8 (len(index), h, w, c).
        """
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self.shape), dtype=np.uint8)
        first = index < len(self.train)
        if first.any():
            out[first] = self.train.take(index[first])
        if (~first).any():
            out[~first] = self.pool.take(self.picked[index[~first] - len(self.train)])
        return out

    def read(self) -> np.ndarray:
        """The whole joined split in memory, uint8 (N, h, w, c)."""
        return np.concatenate([self.train.read(), self.pool.take(self.picked)])


Split = Shards | ArrayShards | JoinedShards  # what training reads a split from
