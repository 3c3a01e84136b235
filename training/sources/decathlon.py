"""The Visual Decathlon layout: COCO-style `root/annotations/<dataset>_{train,val,test}.json`
listing images under `root/data/`.

The Decathlon's own files name images relative to the root (`data/aircraft/images/0001.jpg`);
names relative to `root/data` (`aircraft/images/0001.jpg`) work too. The test split's labels
are hidden by the benchmark, so by default we train on `train` and evaluate on `val`.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np

from ..data import DomainData
from .common import Options, SourceError, make_domain
from .files import read_files


def decathlon(
    name: str,
    resize: int,
    crop: int,
    root: str,
    dataset: str | None = None,
    train_splits: tuple[str, ...] | list[str] = ("train",),
    test_split: str = "val",
    hflip: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """One Decathlon dataset (`dataset` defaults to the domain name, e.g. "aircraft", "dtd").

    `train_splits=["train", "val"]` trains on both, for a final run; the test split must then
    be another split with public labels. Label order follows the sorted category ids.
    """
    base, dataset = Path(root), dataset or name
    opts = Options(resize, crop, hflip, train_limit, test_limit, seed)
    if test_split in train_splits or not train_splits:
        raise SourceError(f"test split {test_split!r} must differ from train splits {train_splits}")
    train = [_read_split(base, dataset, s) for s in train_splits]
    test_categories, test_paths, test_ids = _read_split(base, dataset, test_split)
    categories: dict[int, str] = {}
    for split_categories, _, _ in train:
        categories.update(split_categories)
    order = sorted(categories)
    index = {cat: i for i, cat in enumerate(order)}
    unknown = sorted(set(test_ids) - set(index))
    if unknown:
        raise SourceError(f"{dataset}_{test_split}: category ids {unknown[:5]} are not in training")
    return make_domain(
        name,
        [categories[c] for c in order],
        (
            [p for _, paths, _ in train for p in paths],
            np.array([index[c] for _, _, ids in train for c in ids], dtype=np.int64),
        ),
        (test_paths, np.array([index[c] for c in test_ids], dtype=np.int64)),
        read_files,
        opts,
    )


def _read_split(
    base: Path, dataset: str, split: str
) -> tuple[dict[int, str], list[Path], list[int]]:
    """Categories, image paths and category ids of one annotation file (labelled images only)."""
    path = base / "annotations" / f"{dataset}_{split}.json"
    if not path.is_file():
        raise SourceError(f"{path} not found (expected root/annotations/<dataset>_<split>.json)")
    try:
        doc = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        label_of: dict[int, int] = {}
        for ann in doc.get("annotations") or []:
            label_of.setdefault(int(ann["image_id"]), int(ann["category_id"]))
        labelled = [
            (str(im["file_name"]), label_of[int(im["id"])])
            for im in doc["images"]
            if int(im["id"]) in label_of
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{path}: not a COCO-style annotation file ({exc!r})") from exc
    if not labelled:
        raise SourceError(f"{path}: no labelled images (the Decathlon hides its test labels)")
    undeclared = sorted({cat for _, cat in labelled} - set(categories))
    if undeclared:
        raise SourceError(f"{path}: category ids {undeclared[:5]} are not in its categories")
    return categories, [_image_path(base, f) for f, _ in labelled], [c for _, c in labelled]


def _image_path(base: Path, file_name: str) -> Path:
    """The image named by an annotation, relative to root or root/data, never outside root."""
    rel = PurePosixPath(file_name)
    if rel.is_absolute() or ".." in rel.parts:
        raise SourceError(f"image path {file_name!r} points outside the dataset root")
    direct = base / rel
    return direct if direct.is_file() else base / "data" / rel
