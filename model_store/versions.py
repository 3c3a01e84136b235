"""The store: `<store>/<model-name>/<version>/` folders and a `CURRENT` pointer per model.

A version appears all at once (written into a hidden temp folder, fsynced, renamed) and is never
modified afterwards. CURRENT is replaced atomically (temp file, fsync, rename), so a reader sees
the old or the new name, never half of one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .manifest import (
    ArtifactError,
    Manifest,
    add_files,
    fsync_dir,
    read_manifest,
    verify_files,
    write_atomic,
)

if TYPE_CHECKING:  # torch is imported only where weights are read or written
    from .network import MultiDomainResNet

CURRENT = "CURRENT"
PREVIOUS = "PREVIOUS"  # what CURRENT named before its last change
_VERSION = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value) or value in (".", ".."):
        raise ValueError(f"{kind} {value!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return value


def list_versions(store: Path, name: str) -> list[str]:
    """Published versions of a model, oldest first."""
    root = Path(store) / _check_name("model name", name)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in root.iterdir() if (m := _VERSION.match(p.name))]
    return [v for _, v in sorted(found)]


def _read_pointer(store: Path, name: str, filename: str, missing: str) -> str:
    """The version a pointer file (CURRENT, PREVIOUS) names; `missing` says how to fix its
    absence."""
    pointer = Path(store) / _check_name("model name", name) / filename
    try:
        version = pointer.read_text().strip()
    except FileNotFoundError:
        raise ArtifactError(f"{pointer}: missing; {missing}") from None
    if not _VERSION.match(version):
        raise ArtifactError(f"{pointer}: holds {version!r}, not a version name like v3")
    return version


def current_version(store: Path, name: str) -> str:
    """The version CURRENT names; an error that says how to fix a missing pointer."""
    return _read_pointer(
        store, name, CURRENT, "publish a version first (python -m training train ...)"
    )


def _write_pointer(root: Path, filename: str, version: str) -> None:
    """Replace root/filename by `version`, atomically."""
    write_atomic(root / filename, (version + "\n").encode())


def set_current(store: Path, name: str, version: str) -> None:
    """Point CURRENT at an existing version, atomically; the version it named goes to PREVIOUS
    (what `rollback` returns to)."""
    root = Path(store) / _check_name("model name", name)
    if not (root / _check_name("version", version)).is_dir():
        raise ArtifactError(f"{root / version}: no such version")
    try:
        before: str | None = current_version(store, name)
    except ArtifactError:
        before = None  # the first publish, or a broken pointer being repaired
    if before is not None and before != version:
        _write_pointer(root, PREVIOUS, before)
    _write_pointer(root, CURRENT, version)


def previous_version(store: Path, name: str) -> str:
    """The version CURRENT named before the last change (for a rollback)."""
    return _read_pointer(store, name, PREVIOUS, "CURRENT has not changed since it was set")


def publish_version(
    store: Path,
    model: MultiDomainResNet,
    manifest: Manifest,
    make_current: bool = True,
    graphs: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> str:
    """Write a new immutable version folder and (by default) point CURRENT at it; with `graphs`
    the compiled ONNX graphs go in too, and `extra_files` (key: path in the folder), listed and
    hashed in the manifest before the version appears."""
    from .artifact import write_artifact

    root = Path(store) / _check_name("model name", manifest.name)
    with _staging(root, ".publish-") as tmp:
        while True:
            existing = list_versions(store, manifest.name)
            number = int(existing[-1][1:]) + 1 if existing else 1
            manifest.version = f"v{number}"
            write_artifact(tmp, model, manifest)
            if graphs:
                from .graphs import add_graphs  # the ONNX exporter, only when asked for

                manifest.files = add_graphs(tmp).files
            if extra_files:
                manifest.files = add_files(tmp, manifest, extra_files).files
            try:
                os.rename(tmp, root / manifest.version)  # fails if a concurrent publish took it
                break
            except OSError:
                if not (root / manifest.version).exists():
                    raise
        fsync_dir(root)
    if make_current:
        set_current(store, manifest.name, manifest.version)
    return manifest.version


def seed_versions(source: Path, store: Path, name: str) -> tuple[list[str], list[str], list[str]]:
    """Copy the versions of `name` that `store` lacks from `source` (a read-only store, such as
    the one baked into an image); point CURRENT at source's CURRENT only if `store` has none.

    A version the store has already is kept as it is, with one exception: if source's copy is
    the store's plus new files and measurement records only (what `add_files` adds, e.g. int8
    graphs or a bf16 accuracy record measured for a newer image), those are added, each file
    SHA-256 checked. Any other difference is a clash: the store's version is kept. Each copy is
    verified in a hidden temp folder before it is renamed into place, so a crash mid-copy leaves
    no half version. Returns (added, extended, clashes)."""
    root = Path(store) / _check_name("model name", name)
    offered = list_versions(source, name)
    added, extended, clashes = [], [], []
    for version in offered:
        origin = Path(source) / name / version
        if (root / version).exists():
            held, offer = read_manifest(root / version), read_manifest(origin)
            if held.to_json() == offer.to_json():
                continue
            if _only_adds(held, offer):
                _extend(root / version, held, offer, origin)
                extended.append(version)
            else:
                clashes.append(version)
            continue
        with _staging(root, ".seed-") as tmp:
            shutil.copytree(origin, tmp, dirs_exist_ok=True)
            tmp.chmod(0o755)  # copytree gave it the source folder's mode (read-only in an image)
            try:
                verify_files(tmp, read_manifest(tmp))
            except ArtifactError as exc:
                raise ArtifactError(
                    f"{origin}: not copied, its copy fails to verify: {exc}"
                ) from exc
            os.rename(tmp, root / version)
        added.append(version)
    fsync_dir(root)
    if offered and not (root / CURRENT).exists():
        set_current(store, name, current_version(source, name))
    return added, extended, clashes


def _only_adds(held: Manifest, offer: Manifest) -> bool:
    """Whether `offer` is `held` plus files and `training` records, nothing changed or removed."""
    rest = [replace(m, files={}, training={}).to_json() for m in (held, offer)]
    kept_files = all(offer.files.get(k) == v for k, v in held.files.items())
    kept_records = all(offer.training.get(k) == v for k, v in held.training.items())
    return rest[0] == rest[1] and kept_files and kept_records


def _extend(folder: Path, held: Manifest, offer: Manifest, origin: Path) -> None:
    """Add offer's new files and records to the store's version (add_files: each file written
    atomically, the manifest replaced last), then check the result is exactly offer's."""
    new = {k: (origin / k).read_bytes() for k in offer.files if k not in held.files}
    add_files(folder, replace(held, training=dict(offer.training)), new)
    if read_manifest(folder).to_json() != offer.to_json():
        raise ArtifactError(f"{folder}: extending it from {origin} gave different files")
    verify_files(folder, offer)


@contextmanager
def _staging(root: Path, prefix: str) -> Iterator[Path]:
    """A hidden temp folder inside `root` where a version is assembled before it is renamed into
    place; removed if it is still there afterwards (the version never appeared)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a server may run as another user
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def version_path(store: Path, name: str, version: str | None = None) -> Path:
    """Folder of a version (CURRENT when none is given)."""
    version = current_version(store, name) if version is None else _check_name("version", version)
    path = Path(store) / _check_name("model name", name) / version
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such version; known: {list_versions(store, name)}")
    return path


def load_version(
    store: Path, name: str, version: str | None = None
) -> tuple[Manifest, MultiDomainResNet]:
    """Resolve, verify and load a version (CURRENT by default), in eval mode on CPU."""
    from .artifact import read_artifact

    return read_artifact(version_path(store, name, version))
