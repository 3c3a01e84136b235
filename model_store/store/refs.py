"""A model's record in the store, `<store>/<model>/REFS.json`, and the lock its writers hold.

One JSON file, replaced atomically, says which versions are published (each with its
manifest's SHA-256), which is CURRENT and which was CURRENT before (the rollback target). So
CURRENT and PREVIOUS can never disagree after a crash, and a manifest edited after publishing no
longer matches its version's recorded digest. A version folder the record does not list is not
published: nothing loads it.

Every command that changes the record or deletes a version holds the model's lock (an
exclusive `flock` on `<store>/<model>/.lock`, released by the kernel if the process dies) from
reading the record to its last write, so two writers never interleave. Taking the lock also
tidies what a killed command left behind (hidden temp folders and files, an entry whose folder
never appeared) and upgrades a store of the older layout (`CURRENT` / `PREVIOUS` files).
Readers (the server) take no lock: they read the record once, then the version it names.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .errors import ArtifactError
from .manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    VERSION_NAME,
    Manifest,
    check_bytes,
    sha256_bytes,
)

log = logging.getLogger(__name__)

REFS = "REFS.json"
LOCK = ".lock"
LEGACY_POINTERS = ("CURRENT", "PREVIOUS")
MAX_REFS_BYTES = 1 << 20
LOCK_WAIT_SECONDS = float(os.environ.get("BAP_STORE_LOCK_WAIT", "120"))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_LEFTOVER = (".publish-", ".seed-", ".derive-", ".trash-", f".{REFS}.", ".CURRENT.", ".PREVIOUS.")


def check_name(kind: str, value: object) -> str:
    """A model or version name: refused unless it is plain (no path, no trailing newline)."""
    pattern = VERSION_NAME if kind == "version" else _NAME
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
        rule = "v1, v2, ..." if kind == "version" else "1-64 letters, digits, '.', '_' or '-'"
        raise ArtifactError(f"{kind} {str(value)[:80]!r} is not a {kind} name ({rule})")
    return value


def model_root(store: Path, name: str) -> Path:
    return Path(store) / check_name("model name", name)


@dataclass
class Refs:
    """The published versions (name -> manifest SHA-256, oldest first), CURRENT and PREVIOUS."""

    versions: dict[str, str] = field(default_factory=dict)
    current: str | None = None
    previous: str | None = None

    def to_bytes(self) -> bytes:
        ordered = dict(sorted(self.versions.items(), key=lambda kv: int(kv[0][1:])))
        body = {"current": self.current, "previous": self.previous, "versions": ordered}
        return (json.dumps(body, indent=2) + "\n").encode()

    def digest(self, version: str, root: Path) -> str:
        if version not in self.versions:
            raise ArtifactError(
                f"{root / version}: not a published version of this model; "
                f"published: {list(self.versions)}"
            )
        return self.versions[version]


def read_refs(root: Path) -> Refs:
    """The model's record; ArtifactError in one line if it is missing, unreadable or odd."""
    path = root / REFS
    if not (root / REFS).exists() and (root / "CURRENT").exists():
        raise ArtifactError(
            f"{root}: a store of the older layout (CURRENT file, no {REFS}); upgrade it once "
            f"with `python -m model_store upgrade --store {root.parent} --name {root.name}`"
        )
    raw = files.read_file(root, REFS, MAX_REFS_BYTES)
    try:
        data = json.loads(raw)
        versions = data["versions"]
        if not isinstance(versions, dict) or set(data) != {"current", "previous", "versions"}:
            raise ValueError("expected current, previous and versions")
        for version, digest in versions.items():
            check_name("version", version)
            if not isinstance(digest, str) or len(digest) != 64:
                raise ValueError(f"{version}: not a SHA-256")
        refs = Refs(dict(versions), data["current"], data["previous"])
        for pointer in (refs.current, refs.previous):
            if pointer is not None and pointer not in versions:
                raise ValueError(f"points at {pointer!r}, which it does not list")
    except (ValueError, KeyError, TypeError, ArtifactError, RecursionError) as exc:
        raise ArtifactError(f"{path}: unreadable store record ({exc})") from None
    return refs


def read_or_new_refs(root: Path) -> Refs:
    """The record, or an empty one for a model that has none yet (its first publish or seed)."""
    return read_refs(root) if (root / REFS).exists() else Refs()


def write_refs(root: Path, refs: Refs) -> None:
    files.replace_file(root / REFS, refs.to_bytes())


def read_manifest_bytes(root: Path, version: str, refs: Refs) -> tuple[Manifest, bytes]:
    """A published version's manifest, checked against the digest the record keeps for it and
    against where it lies (its name and version are its folder's)."""
    folder = root / check_name("version", version)
    expected = refs.digest(version, root)
    raw = files.read_file(folder, MANIFEST, MAX_MANIFEST_BYTES)
    if sha256_bytes(raw) != expected:
        raise ArtifactError(
            f"{folder / MANIFEST}: SHA-256 differs from the one published for {version} in "
            f"{root / REFS} (edited or replaced after publishing)"
        )
    manifest = Manifest.from_json(raw, folder / MANIFEST)
    if manifest.version != version or manifest.name != root.name:
        raise ArtifactError(
            f"{folder / MANIFEST}: says {manifest.name} {manifest.version}, but lies in "
            f"{root.name}/{version}"
        )
    return manifest, raw


@contextmanager
def locked(store: Path, name: str) -> Iterator[Path]:
    """Hold the model's lock; yields the model's folder (created if needed), tidied and in the
    current layout."""
    root = model_root(store, name)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, root)
        _upgrade_layout(root)
        _tidy(root)
        yield root
    finally:
        os.close(fd)  # releases the flock


def _acquire(fd: int, root: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if time.monotonic() > deadline:
            raise ArtifactError(
                f"{root / LOCK}: another command has held the store's lock for over "
                f"{LOCK_WAIT_SECONDS:.0f} s (BAP_STORE_LOCK_WAIT); try again when it is done"
            )
        time.sleep(0.05)


def _upgrade_layout(root: Path) -> None:
    """Turn the older layout (CURRENT / PREVIOUS files, nothing covering the manifests) into a
    record; each listed version's files are verified first, and its manifest's digest is
    taken as it stands now (trust on first use)."""
    if (root / REFS).exists() or not (root / "CURRENT").exists():
        return
    refs = Refs()
    for folder in sorted(version_folders(root), key=lambda p: int(p.name[1:])):
        raw = files.read_file(folder, MANIFEST, MAX_MANIFEST_BYTES)
        manifest = Manifest.from_json(raw, folder / MANIFEST)
        try:
            for key, entry in manifest.files.items():
                check_file(folder, key, entry)
        except ArtifactError as exc:
            log.warning("store_upgrade_skipped version=%s reason=%s", folder.name, exc)
            continue
        refs.versions[folder.name] = sha256_bytes(raw)
    for pointer in LEGACY_POINTERS:
        try:
            named = (root / pointer).read_text().strip()
        except OSError:
            continue
        if named in refs.versions:
            setattr(refs, pointer.lower(), named)
    if refs.current is None:
        raise ArtifactError(f"{root / 'CURRENT'}: names no verified version; nothing upgraded")
    if refs.previous == refs.current:
        refs.previous = None
    write_refs(root, refs)
    for pointer in LEGACY_POINTERS:
        files.discard(root / pointer)
    log.info("store_upgraded root=%s versions=%s", root, list(refs.versions))


def version_folders(root: Path) -> list[Path]:
    """The folders named like versions (published or not), never through a symlink."""
    if not files.is_real_dir(root):
        return []
    return [p for p in root.iterdir() if VERSION_NAME.fullmatch(p.name) and files.is_real_dir(p)]


def _tidy(root: Path) -> None:
    """Remove what a killed or failed command left: hidden temp folders and files, and record
    entries (neither CURRENT nor PREVIOUS) whose folder never appeared or was half deleted."""
    for path in root.iterdir():
        if path.name.startswith(_LEFTOVER):
            files.discard(path)
            log.info("store_tidied path=%s", path)
    if not (root / REFS).exists():
        return
    refs = read_refs(root)
    pinned = {refs.current, refs.previous}
    gone = [v for v in refs.versions if v not in pinned and not (root / v / MANIFEST).exists()]
    if gone:
        for version in gone:
            del refs.versions[version]
        write_refs(root, refs)
        log.info("store_tidied root=%s dropped=%s", root, gone)


def check_file(folder: Path, key: str, entry: dict) -> bytes:
    """One listed file's bytes, read confined and checked against its manifest entry."""
    return check_bytes(folder / key, files.read_file(folder, key), entry)
