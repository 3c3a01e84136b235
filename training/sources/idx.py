"""The idx format of MNIST-like datasets, read with numpy (torchvision is not available here).

Layout: two zero bytes, a type byte (8 = uint8), the number of dimensions, one big-endian uint32
size per dimension, then the raw values.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .common import SourceError

_UINT8 = 8


def read_idx(path: Path) -> np.ndarray:
    """A gzip-compressed uint8 idx file as an array of its declared shape."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{path}: not a readable gzip file ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != _UINT8:
        raise SourceError(f"{path}: not a uint8 idx file (header {raw[:4].hex()})")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise SourceError(f"{path}: truncated idx header")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) != header + math.prod(shape):
        raise SourceError(f"{path}: {len(raw) - header} bytes of data for shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)
