"""Image folders with one sub-folder per class: the generic layout most users have, and the
ImageNet-to-Sketch layout (`root/<dataset>/{train,test}/<class>/*`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import DomainData
from .common import Options, SourceError, make_domain, stratified_split
from .files import read_files, scan_class_folders


def folder(
    name: str,
    resize: int,
    crop: int,
    root: str,
    test_fraction: float = 0.2,
    hflip: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """`root/train/<class>/*` + `root/test/<class>/*`, or `root/<class>/*` split stratified.

    Labels are the sorted class folder names (of train/ when the split is given).
    """
    base, opts = Path(root), Options(resize, crop, hflip, train_limit, test_limit, seed)
    if (base / "train").is_dir() or (base / "test").is_dir():
        return _split_folders(name, base, opts)
    labels, paths, targets = scan_class_folders(base)
    train, test = stratified_split(targets, test_fraction, seed)
    return _every_class_taught(
        make_domain(
            name,
            labels,
            ([paths[i] for i in train], targets[train]),
            ([paths[i] for i in test], targets[test]),
            read_files,
            opts,
        ),
        opts,
    )


def sketch(
    name: str,
    resize: int,
    crop: int,
    root: str,
    dataset: str | None = None,
    hflip: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """One dataset of the ImageNet-to-Sketch benchmark: `root/<dataset>/{train,test}/<class>/*`.

    `dataset` defaults to the domain name (e.g. "cubs_cropped", "sketches", "wikiart").
    """
    opts = Options(resize, crop, hflip, train_limit, test_limit, seed)
    return _split_folders(name, Path(root) / (dataset or name), opts)


def _split_folders(name: str, base: Path, opts: Options) -> DomainData:
    """Given train/ and test/ class folders; test classes must be training classes."""
    missing = [s for s in ("train", "test") if not (base / s).is_dir()]
    if missing:
        raise SourceError(f"{base}: missing {' and '.join(missing)}/ (expected train/ and test/)")
    labels, train_paths, train_targets = scan_class_folders(base / "train")
    _, test_paths, test_targets = scan_class_folders(base / "test", labels)
    return _every_class_taught(
        make_domain(
            name,
            labels,
            (train_paths, train_targets),
            (test_paths, test_targets),
            read_files,
            opts,
        ),
        opts,
    )


def _every_class_taught(data: DomainData, opts: Options) -> DomainData:
    """Refuse a class folder whose files are all unreadable: its label would be published
    untaught. Only checked on the whole training split (a `train_limit` subset may miss one)."""
    if opts.train_limit is None:
        taught = torch.bincount(data.train.targets, minlength=len(data.labels)).tolist()
        if untaught := [label for label, n in zip(data.labels, taught, strict=True) if not n]:
            raise SourceError(
                f"{data.name}: class {untaught[0]!r} has no readable training image "
                f"(classes without one: {', '.join(untaught)})"
            )
    return data
