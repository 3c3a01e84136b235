"""What every real source shares: its error type, seeded splits and subsets, locating installed
package data, and turning chosen items into a `DomainData`.

Subsets are picked as indices *before* any image is decoded or resized, so a run with
`train_limit=2000` never pays for the other 58,000 images. In-memory arrays become an
`ImageSplit` (decoded once: small); image files a `FileSplit` (decoded per batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import DomainData, ImageSplit, Split, images_from_arrays

# (chosen items, their targets, resize) -> the split of the items that can be read (files may
# be unreadable; arrays always are).
Reader = Callable[[Any, np.ndarray, int], Split]


class SourceError(ValueError):
    """A domain entry that cannot be loaded; the message says what to install or fix."""


def pick(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of at most `limit` of `n` items (all when None).

    Always in shuffled order, so any prefix of a split is a fair sample of it (class-sorted
    folders would otherwise bias statistics taken from the first images).
    """
    if limit is not None and limit < 0:
        raise SourceError(f"a limit must be >= 0 or None, got {limit}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].numpy()


def stratified_split(
    targets: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices with the same class proportions in both.

    Every class with at least two items keeps at least one on each side.
    """
    if not 0.0 < test_fraction < 1.0:
        raise SourceError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        n_test = min(len(members) - 1, max(1, round(len(members) * test_fraction)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def package_path(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"package {package!r} is not installed; install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise SourceError(f"{path} is missing from package {package!r}; reinstall it: {install}")
    return path


def empty_images(resize: int) -> Tensor:
    return torch.zeros((0, 3, resize, resize), dtype=torch.uint8)


def read_arrays(arrays: np.ndarray, targets: np.ndarray, resize: int) -> ImageSplit:
    """Reader for in-memory uint8 arrays (grey or RGB): decoded now through the eval path and
    kept in memory, since these packaged sets are small and cutting tensors beats decoding."""
    images = images_from_arrays(arrays, resize) if len(arrays) else empty_images(resize)
    return ImageSplit(images, torch.from_numpy(np.asarray(targets)).long())


@dataclass(frozen=True)
class Options:
    """The arguments every real source takes, carried as one value from its signature on."""

    resize: int
    crop: int
    hflip: bool
    train_limit: int | None
    test_limit: int | None
    seed: int

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise SourceError(
                f"need 0 < crop <= resize, got crop={self.crop}, resize={self.resize}"
            )


def make_domain(
    name: str,
    labels: Sequence[str],
    train: tuple[Any, np.ndarray],
    test: tuple[Any, np.ndarray],
    read: Reader,
    opts: Options,
) -> DomainData:
    """Pick the seeded subsets of (items, targets) per split, read only those, and check."""

    def split(items: Any, targets: np.ndarray, limit: int | None, which: str) -> Split:
        idx = pick(len(targets), limit, opts.seed)
        if not len(idx):
            return ImageSplit(empty_images(opts.resize), torch.zeros(0, dtype=torch.long))
        chosen = items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]
        result = read(chosen, np.asarray(targets)[idx], opts.resize)
        if not len(result):
            raise SourceError(f"{name}: no readable image in the {which} split")
        return result

    return DomainData(
        name=name,
        labels=tuple(labels),
        train=split(*train, opts.train_limit, "train"),
        test=split(*test, opts.test_limit, "test"),
        resize=opts.resize,
        crop=opts.crop,
        hflip=opts.hflip,
    )


def pooled_domain(
    name: str,
    labels: Sequence[str],
    images: np.ndarray,
    targets: np.ndarray,
    test_fraction: float,
    opts: Options,
) -> DomainData:
    """A dataset without an official test split: one pool of uint8 arrays, split stratified."""
    train, test = stratified_split(targets, test_fraction, opts.seed)
    return make_domain(
        name,
        labels,
        (images[train], targets[train]),
        (images[test], targets[test]),
        read_arrays,
        opts,
    )
