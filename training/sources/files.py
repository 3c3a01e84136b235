"""Image files on disk -> a split read per batch through the very decoder and eval transform the
server uses (`model_store.decode_image` + `eval_pixels`, in `training.data`), so a file trains
as it would be served. Unreadable files are skipped and counted, never fatal."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model_store import ACCEPTED_FORMATS

from ..data import MAX_PIXELS, FileSplit
from .common import SourceError

log = logging.getLogger(__name__)


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


def read_files(paths: Sequence[Path], targets: np.ndarray, resize: int) -> FileSplit:
    """Reader for image files: a split that decodes them per batch (`training.data`), of the
    files whose header an accepted format reads and whose size is within MAX_PIXELS.

    Only headers are read here (a file's first bytes), so loading 40k images takes seconds and
    no memory; a file corrupt past its header fails when its batch is decoded, naming it."""

    def readable(path: Path) -> bool:
        try:
            with Image.open(path, formats=ACCEPTED_FORMATS) as img:
                width, height = img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return False
        return width * height <= MAX_PIXELS

    # Opening files waits on the disk, not the GIL: threads overlap the waits.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        ok = np.fromiter(pool.map(readable, paths), dtype=bool, count=len(paths))
    if not ok.all():
        bad = [str(p) for p, good in zip(paths, ok, strict=True) if not good]
        log.warning("skipped %d unreadable image files, e.g. %s", len(bad), bad[:3])
    kept = [p for p, good in zip(paths, ok, strict=True) if good]
    return FileSplit.of(kept, torch.from_numpy(np.asarray(targets)[ok]).long())
