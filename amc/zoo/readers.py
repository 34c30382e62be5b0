"""Readers for on-disk data formats that never unpickle: IDX (MNIST family), CIFAR-10 binary."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amc.errors import DataError

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its declared shape.

    Example:
        >>> images = read_idx("train-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> images.shape
        (60000, 28, 28)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise DataError(f"Cannot read IDX file {str(path)!r}: {exc}.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{str(path)!r} is not an IDX file: expected the magic bytes 00 00 <type> <ndim> "
            f"(types {', '.join(hex(t) for t in _IDX_DTYPES)}), got {raw[:4].hex(' ')!r}."
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4")) if ndim else ()
    count = int(np.prod(shape)) if shape else 0
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file {str(path)!r} declares shape {shape} ({expected} bytes) but has "
            f"{len(raw)} bytes; the file is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def read_cifar10_binary(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 binary batch: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR10_RECORD_BYTES != 0:
        raise DataError(
            f"{str(path)!r} is not a CIFAR-10 binary batch: its size {raw.size} bytes is not a "
            f"positive multiple of {CIFAR10_RECORD_BYTES} (1 label byte + 3072 pixel bytes)."
        )
    records = raw.reshape(-1, CIFAR10_RECORD_BYTES)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    images = torch.from_numpy(records[:, 1:].copy()).reshape(-1, 3, 32, 32)
    return images, labels
