"""The store: `<store>/<model>/<version>/` folders and the model's record (refs.py).

The rule for a published version: **it never changes.** Its files and its manifest are written
once, before it appears; the record keeps its manifest's SHA-256, and that manifest keeps every
file's. What is measured or compiled later (int8 graphs, a bf16 accuracy record, graphs from a
newer exporter) makes a new version derived from it (`derive_version`), which becomes CURRENT
only if CURRENT still names the version it came from. A loader reads each file's bytes once,
checks them, and loads those same bytes: what it verified is what it serves.

Every change is made under the model's lock, in an order a crash at any step survives:
a new version is assembled in a hidden folder, listed in the record, renamed into place, and
only then named CURRENT; gc renames a version out of sight before unlisting it. Not covered:
power loss on a filesystem that reorders metadata without the folder fsyncs we do, and network
filesystems (NFS, SMB), whose rename and lock semantics differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtimes.layout import GRAPH_DIR
from . import files
from .errors import ArtifactError
from .manifest import MANIFEST, WEIGHTS, Manifest, PrecisionRecord, file_entry
from .refs import (
    REFS,
    Refs,
    locked,
    model_root,
    read_manifest_bytes,
    read_or_new_refs,
    read_refs,
    version_folders,
    write_refs,
)
from .stored import StoredVersion, open_version

if TYPE_CHECKING:  # torch is imported only where weights are read or written
    from ..nets.network import MultiDomainResNet

log = logging.getLogger(__name__)
SAME_AS_NOW = "same-as-now"  # publish_version: move CURRENT whatever it names


@dataclass(frozen=True)
class Publication:
    """What a command that publishes did: the new version, and what CURRENT names after it
    (with a note when CURRENT was not moved because it changed while the command ran)."""

    version: str
    current: str | None
    note: str = ""


def load_version(
    store: Path, name: str, version: str | None = None
) -> tuple[Manifest, MultiDomainResNet]:
    """Resolve, verify and load a version (CURRENT by default), in eval mode on CPU."""
    from .artifact import load_model

    stored = open_version(store, name, version)
    return stored.manifest, load_model(stored)


# --- changes, each under the model's lock ---


def set_current(
    store: Path, name: str, version: str, check: Callable[[StoredVersion], Any] | None = None
) -> str | None:
    """Point CURRENT at a published version after verifying it (every file, then `check`);
    the version it named becomes PREVIOUS. Returns that version."""
    with locked(store, name) as root:
        stored = open_version(store, name, version)
        stored.verify()
        if check is not None:
            check(stored)
        refs = read_refs(root)
        before = refs.current
        if before != version:
            refs.previous, refs.current = before, version
            write_refs(root, refs)
        return before


def rollback(
    store: Path, name: str, check: Callable[[StoredVersion], Any] | None = None
) -> tuple[str, str]:
    """Make PREVIOUS CURRENT again (verified first); returns (now CURRENT, was CURRENT)."""
    with locked(store, name) as root:
        refs = read_refs(root)
        if refs.previous is None or refs.current is None:
            raise ArtifactError(f"{root / REFS}: no PREVIOUS version to roll back to")
        stored = open_version(store, name, refs.previous)
        stored.verify()
        if check is not None:
            check(stored)
        refs.current, refs.previous = refs.previous, refs.current
        write_refs(root, refs)
        return refs.current, refs.previous


def collect_garbage(store: Path, name: str, keep: int) -> tuple[list[str], list[str]]:
    """Delete all but the newest `keep` versions, never CURRENT or PREVIOUS; each is renamed out
    of sight before it is unlisted, so a kill leaves no half version. Returns (removed, kept)."""
    if keep < 1:
        raise ArtifactError(f"--keep must be >= 1, got {keep}")
    with locked(store, name) as root:
        refs = read_refs(root)
        protected = {refs.current, refs.previous}
        listed = list(refs.versions)
        doomed = [v for v in listed[:-keep] if v not in protected]
        for version in doomed:
            files.remove_tree(root / version)
            del refs.versions[version]
            write_refs(root, refs)
        return doomed, [v for v in listed if v not in doomed]


def publish_version(
    store: Path,
    model: MultiDomainResNet,
    manifest: Manifest,
    make_current: bool = True,
    extra_files: dict[str, bytes] | None = None,
    expect_current: str | None = SAME_AS_NOW,
) -> Publication:
    """Write a new version (weights, manifest and `extra_files` by key, such as the compiled
    graphs of `graphs.export_graphs`) and, by default, make it CURRENT. With `expect_current`,
    CURRENT moves only if it still names that version (what the command started from): a change
    made meanwhile by another command is never silently overwritten."""
    from .artifact import weights_bytes

    contents = {WEIGHTS: weights_bytes(model), **(extra_files or {})}
    if manifest.spec != model.spec:
        raise ValueError("manifest.spec must be the model's spec")
    with locked(store, manifest.name) as root:
        refs = read_or_new_refs(root)
        move = make_current and expect_current in (SAME_AS_NOW, refs.current)
        return _commit(root, refs, manifest, contents, move, expect_current)


def derive_version(
    store: Path,
    name: str,
    source: str,
    new_files: dict[str, bytes],
    precisions: dict[str, PrecisionRecord] | None = None,
    new_graphs: bool = False,
) -> tuple[Publication, Manifest]:
    """A new version with `source`'s files (each read and checked), `new_files` and the given
    precision records added; it becomes CURRENT if CURRENT names `source`. How a version gains
    files or measurements without changing a published one. With `new_graphs`, `new_files` are
    all its graphs: the source's graphs and what was measured on them are not carried."""
    with locked(store, name) as root:
        stored = open_version(store, name, source)
        refs = read_refs(root)
        carried = stored.manifest.precisions if not new_graphs else {}
        manifest = replace(
            stored.manifest,
            files={},
            precisions={**carried, **(precisions or {})},
            provenance={**stored.manifest.provenance, "derived_from": source},
        )
        old = [k for k in stored.manifest.files if not (new_graphs and k.startswith(GRAPH_DIR))]
        contents = {k: stored.read(k) for k in old if k not in new_files}
        contents.update(new_files)
        return _commit(root, refs, manifest, contents, refs.current == source, source), manifest


def recompile_version(
    store: Path, name: str, version: str | None = None
) -> tuple[Publication, Manifest]:
    """A version derived from `version` (CURRENT by default) with graphs exported from its
    weights by this code: how a compiled graph fix or a version without graphs reaches a stored
    model without retraining. int8 graphs and precision records are not carried (measure them
    again on the new graphs)."""
    from ..runtimes.graphs import export_graphs
    from .artifact import load_model

    stored = open_version(store, name, version)
    graphs = export_graphs(load_model(stored))
    return derive_version(store, name, stored.folder.name, graphs, new_graphs=True)


def _commit(
    root: Path,
    refs: Refs,
    manifest: Manifest,
    contents: dict[str, bytes],
    move: bool,
    expected: str | None,
) -> Publication:
    """Assemble the version in a hidden folder, list it, rename it into place, then (if `move`)
    make it CURRENT: a crash between any two steps leaves the record valid (lock held)."""
    taken = {int(v[1:]) for v in refs.versions} | {int(p.name[1:]) for p in version_folders(root)}
    manifest.version = f"v{max(taken, default=0) + 1}"
    manifest.files = {k: file_entry(v) for k, v in sorted(contents.items())}
    _place(root, refs, manifest.version, contents.items(), manifest.to_bytes(), ".publish-")
    if move:
        refs.previous, refs.current = refs.current, manifest.version
        write_refs(root, refs)
        return Publication(manifest.version, manifest.version)
    note = ""
    if expected not in (SAME_AS_NOW, None) and refs.current != expected:
        note = (
            f"CURRENT moved from {expected} to {refs.current} while this ran, so it was left at "
            f"{refs.current}; `python -m model_store set-current {manifest.version}` to serve "
            f"{manifest.version}"
        )
        log.warning("publish_not_current version=%s %s", manifest.version, note)
    return Publication(manifest.version, refs.current, note)


def seed_versions(source: Path, store: Path, name: str) -> tuple[list[str], list[str]]:
    """Copy the versions of `name` that `store` lacks from `source` (a read-only store, such as
    the one baked into an image), each file checked as it is read; point CURRENT at source's
    CURRENT only if `store` has none. A version both hold with different manifests is a clash:
    the store's is kept. Returns (added, clashes)."""
    source_root = model_root(source, name)
    offered = read_refs(source_root)
    added, clashes = [], []
    with locked(store, name) as root:
        refs = read_or_new_refs(root)
        for version, digest in offered.versions.items():
            if version in refs.versions:
                if refs.versions[version] != digest:
                    clashes.append(version)
                continue
            manifest, raw = read_manifest_bytes(source_root, version, offered)
            stored = StoredVersion(source_root / version, manifest)
            contents = ((key, stored.read(key)) for key in manifest.files)  # one file at a time
            _place(root, refs, version, contents, raw, ".seed-")
            added.append(version)
        if refs.current is None and offered.current is not None:
            refs.current = offered.current
            write_refs(root, refs)
    return added, clashes


def _place(
    root: Path,
    refs: Refs,
    version: str,
    contents: Iterable[tuple[str, bytes]],
    manifest: bytes,
    prefix: str,
) -> None:
    """Make a version appear: its files and manifest written in a hidden folder, the version
    listed in the record (with its manifest's digest), then the folder renamed into place. A
    crash before the rename leaves an entry without a folder, which the next lock holder drops."""
    with _staging(root, prefix) as tmp:
        for key, data in contents:
            files.write_file(tmp / files.check_key(key), data)
        files.write_file(tmp / MANIFEST, manifest)
        refs.versions[version] = file_entry(manifest)["sha256"]
        write_refs(root, refs)
        files.rename(tmp, root / version)


@contextmanager
def _staging(root: Path, prefix: str) -> Iterator[Path]:
    """A hidden folder where a version is assembled; removed if it did not become one."""
    tmp = files.make_staging(root, prefix)
    try:
        yield tmp
    finally:
        if tmp.exists():
            files.discard(tmp)
