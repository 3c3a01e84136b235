"""Image files on disk -> stored images, through the very decoder and eval transform the server
uses (`model_store.decode_image` + `eval_pixels`), so a file trains as it would be served.
Unreadable files are skipped and counted, never fatal."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model_store import ImageError, Preprocess, decode_image, eval_pixels

from .common import SourceError, empty_images

log = logging.getLogger(__name__)

# Pillow's own decompression-bomb threshold: larger files are skipped as unreadable.
MAX_PIXELS = 89_478_485


def scan_class_folders(
    root: Path, labels: Sequence[str] | None = None
) -> tuple[tuple[str, ...], list[Path], np.ndarray]:
    """Label names, files and targets of `root/<class>/...` (hidden entries ignored).

    Labels are the sorted sub-folder names, or the given `labels` (a test split must use its
    training split's labels; an unknown class folder is an error, and so is an empty one).
    """
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder of class sub-folders")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = tuple(found) if labels is None else tuple(labels)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise SourceError(f"{root}: class folders {unknown} are not among the training classes")
    if not names:
        raise SourceError(f"{root}: no class sub-folders")
    paths: list[Path] = []
    targets: list[int] = []
    for index, label in enumerate(names):
        folder = root / label
        files = [
            f
            for f in (sorted(folder.rglob("*")) if folder.is_dir() else [])
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)
        ]
        if folder.is_dir() and not files:  # else a label no image teaches gets published
            raise SourceError(f"{folder}: class folder holds no files; add images or remove it")
        paths += files
        targets += [index] * len(files)
    return names, paths, np.asarray(targets, dtype=np.int64)


def decode_files(paths: Sequence[Path], resize: int) -> tuple[Tensor, np.ndarray]:
    """Decoder for image paths: RGB, EXIF-oriented, resized and centre-cropped like serving."""
    pre = Preprocess(resize, resize, (0.0,) * 3, (1.0,) * 3)

    def one(path: Path) -> Tensor | None:
        try:
            return torch.from_numpy(
                eval_pixels(decode_image(path.read_bytes(), MAX_PIXELS, resize), pre)
            )
        except (ImageError, OSError):
            return None

    # Pillow releases the GIL while decoding and resizing, so threads overlap the work.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(one, paths))
    ok = np.array([img is not None for img in images], dtype=bool)
    if not ok.all():
        bad = [str(p) for p, good in zip(paths, ok, strict=True) if not good]
        log.warning("skipped %d unreadable image files, e.g. %s", len(bad), bad[:3])
    kept = [img for img in images if img is not None]
    return (torch.stack(kept) if kept else empty_images(resize)), ok
