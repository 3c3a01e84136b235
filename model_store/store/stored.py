"""Reading the store: which versions a model has, which is CURRENT, and a published version
opened with its manifest checked against the store's record (see versions.py for the rules).

Torch-free: the server reads, verifies and serves a version through this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import files
from .errors import ArtifactError
from .manifest import MANIFEST, Manifest
from .refs import (
    REFS,
    Refs,
    check_file,
    check_name,
    model_root,
    read_manifest_bytes,
    read_refs,
)


@dataclass
class StoredVersion:
    """A published version whose manifest matched the store's record; its files are read
    through `read`, which checks each one's SHA-256 on the very bytes it returns."""

    folder: Path
    manifest: Manifest

    def read(self, key: str) -> bytes:
        if key not in self.manifest.files:
            raise ArtifactError(f"{self.folder / MANIFEST}: lists no {key}")
        return check_file(self.folder, key, self.manifest.files[key])

    def verify(self) -> None:
        """Every listed file, read and checked."""
        for key in self.manifest.files:
            self.read(key)


def _holds(root: Path) -> bool:
    """Whether a model folder has a record (or one of the older layout, which says to upgrade)."""
    return (root / REFS).exists() or (root / "CURRENT").exists()


def list_versions(store: Path, name: str) -> list[str]:
    """Published versions of a model, oldest first ([] for a model the store does not hold)."""
    root = model_root(store, name)
    return list(read_refs(root).versions) if _holds(root) else []


def list_models(store: Path) -> list[str]:
    """The models a store holds (folders with a record, or of the older layout)."""
    if not files.is_real_dir(Path(store)):
        return []
    return sorted(p.name for p in Path(store).iterdir() if files.is_real_dir(p) and _holds(p))


def _resolve(store: Path, name: str, version: str | None) -> tuple[Path, Refs, str]:
    """The model's folder, its record (read once) and the published version meant (CURRENT
    when none is given); an error that says how to fix a model without one."""
    root = model_root(store, name)
    if not _holds(root):
        raise ArtifactError(
            f"{root}: no versions; publish a version first (python -m training train ...)"
        )
    refs = read_refs(root)
    if version is None:
        if refs.current is None:
            raise ArtifactError(f"{root / REFS}: names no CURRENT version")
        version = refs.current
    if check_name("version", version) not in refs.versions:
        raise ArtifactError(f"{root / version}: no such version; known: {list(refs.versions)}")
    return root, refs, version


def current_version(store: Path, name: str) -> str:
    """The version CURRENT names; an error that says how to fix a model with none."""
    return _resolve(store, name, None)[2]


def previous_version(store: Path, name: str) -> str:
    """The version CURRENT named before the last change (for a rollback)."""
    root = model_root(store, name)
    previous = read_refs(root).previous
    if previous is None:
        raise ArtifactError(f"{root / REFS}: no PREVIOUS version (CURRENT has not changed)")
    return previous


def version_path(store: Path, name: str, version: str | None = None) -> Path:
    """Folder of a published version (CURRENT when none is given)."""
    root, _, version = _resolve(store, name, version)
    return root / version


def open_version(store: Path, name: str, version: str | None = None) -> StoredVersion:
    """A published version (CURRENT by default) with its manifest checked against the record
    (read once, so the version named and the digest checked come from the same record)."""
    root, refs, version = _resolve(store, name, version)
    manifest, _ = read_manifest_bytes(root, version, refs)
    return StoredVersion(root / version, manifest)


def open_folder(folder: Path) -> StoredVersion:
    """`open_version` for a version's folder path (`<store>/<model>/<version>`)."""
    folder = Path(folder)
    return open_version(folder.parent.parent, folder.parent.name, folder.name)
