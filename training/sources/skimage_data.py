"""Photos bundled with scikit-image (no download): texture patches and the small LFW face subset."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import DomainData
from .common import Options, SourceError, make_domain, pooled_domain, read_arrays

SKIMAGE_INSTALL = "pip install scikit-image  (or: pip install '.[data]')"
# Grey 512x512 texture photos that skimage ships in its wheel (others need pooch and a download).
TEXTURE_PHOTOS = ("brick", "grass", "gravel")


def _skimage_data() -> Any:
    try:
        import skimage.data
    except ImportError as exc:
        raise SourceError(f"this source needs scikit-image: {SKIMAGE_INSTALL}") from exc
    return skimage.data


def cut_patches(photo: np.ndarray, patch: int, stride: int, x0: int, x1: int) -> np.ndarray:
    """All `patch`-square windows on a `stride` grid lying wholly in columns [x0, x1)."""
    ys = range(0, photo.shape[0] - patch + 1, stride)
    xs = range(x0, x1 - patch + 1, stride)
    return np.stack([photo[y : y + patch, x : x + patch] for y in ys for x in xs])


def textures(
    name: str,
    resize: int,
    crop: int,
    photos: tuple[str, ...] | list[str] = TEXTURE_PHOTOS,
    patch: int = 64,
    stride: int = 16,
    test_fraction: float = 0.25,
    hflip: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """One class per texture photo; images are square patches.

    Overlapping patches of one photo are nearly copies of each other, so the split is by region:
    the left (1 - test_fraction) of every photo gives training patches, the right part test
    patches, and no patch crosses the boundary.
    """
    unknown = sorted(set(photos) - set(TEXTURE_PHOTOS))
    if unknown or not photos or len(set(photos)) != len(photos):
        raise SourceError(f"photos must be distinct names from {TEXTURE_PHOTOS}, got {photos}")
    opts = Options(resize, crop, hflip, train_limit, test_limit, seed)
    data = _skimage_data()
    sides: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])  # train patches, test patches
    for photo_name in photos:
        photo = getattr(data, photo_name)()
        width = photo.shape[1]
        boundary = round(width * (1.0 - test_fraction))
        if not patch <= boundary <= width - patch or stride < 1:
            raise SourceError(
                f"textures: {patch}px patches do not fit both sides of column {boundary} "
                f"of a {width}px photo; lower patch or change test_fraction"
            )
        sides[0].append(cut_patches(photo, patch, stride, 0, boundary))
        sides[1].append(cut_patches(photo, patch, stride, boundary, width))
    train, test = (
        (np.concatenate(cuts), np.repeat(np.arange(len(cuts)), [len(c) for c in cuts]))
        for cuts in sides
    )
    return make_domain(name, tuple(photos), train, test, read_arrays, opts)


def lfw_faces(
    name: str,
    resize: int,
    crop: int,
    test_fraction: float = 0.25,
    hflip: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """skimage's LFW subset: 200 grey 25x25 images, the first 100 faces and the last 100 not."""
    faces = _skimage_data().lfw_subset()
    images = np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)
    targets = (np.arange(len(images)) >= 100).astype(np.int64)
    opts = Options(resize, crop, hflip, train_limit, test_limit, seed)
    return pooled_domain(name, ("face", "not_face"), images, targets, test_fraction, opts)
