"""Every filesystem step the store takes: confined reads that hash the bytes they return, and the
writes that make a version or the store's record appear all at once.

Why one module: the store's guarantees (a reader never sees half a version; a crash or a full
disk at any step leaves the last committed state) rest on the order of these steps, and the
fault-injection tests interpose on exactly the functions below that change the disk
(`STEPS`). Callers use them as `files.write_file(...)`, never imported by name, so that holds.

Reads never follow a symlink (the version folder, any folder on the way to a file, the file)
and take only regular files, so a manifest or a planted link cannot make the store read or
write outside a version.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

from .errors import ArtifactError

# A manifest key: a relative path of plain names (letters, digits, '.', '_', '-'; none starting
# with '.'), at most 8 deep: what the store writes (graphs/int8/domains/fashion.onnx), nothing a
# path could escape with.
_KEY_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", re.ASCII)
MAX_KEY_DEPTH = 8
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: no FIFO hang


def check_key(key: object) -> str:
    """A manifest file key, refused unless it is a plain relative path inside the version."""
    parts = key.split("/") if isinstance(key, str) else []
    if not parts or len(parts) > MAX_KEY_DEPTH or not all(_KEY_PART.fullmatch(p) for p in parts):
        raise ArtifactError(
            f"file key {str(key)[:80]!r} is not a plain relative path inside the version "
            "(names of letters, digits, '.', '_' or '-', none starting with '.')"
        )
    return key  # type: ignore[return-value]


def _describe(exc: OSError, path: Path) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW met a link (ENOTDIR: as a folder)
        return f"{path}: a symlink on the way (the store follows no symlink)"
    return f"{path}: {exc.strerror or exc}"


def read_file(folder: Path, key: str, limit: int | None = None) -> bytes:
    """The bytes of `folder/key`, opened without following any symlink from `folder` down (the
    folder itself included); refused past `limit` bytes before anything is read."""
    parts = check_key(key).split("/")
    path = Path(folder) / key
    fds: list[int] = []
    try:
        fds.append(os.open(folder, _OPEN_DIR))
        for part in parts[:-1]:
            fds.append(os.open(part, _OPEN_DIR, dir_fd=fds[-1]))
        fds.append(os.open(parts[-1], _OPEN_FILE, dir_fd=fds[-1]))
        info = os.fstat(fds[-1])
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{path}: not a regular file")
        if limit is not None and info.st_size > limit:
            raise ArtifactError(f"{path}: {info.st_size} bytes, over the {limit}-byte limit")
        chunks = []
        while chunk := os.read(fds[-1], 1 << 24):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ArtifactError(f"{path}: missing") from None
        raise ArtifactError(_describe(exc, path)) from None
    finally:
        for fd in fds:
            os.close(fd)


def is_real_dir(path: Path) -> bool:
    """A folder that is not a symlink (the store never enters one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _located(exc: OSError, path: Path) -> OSError:
    """The same error naming the file (a full disk's write error carries no file name)."""
    if exc.filename:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


# --- the steps that change the disk (each one is a point the fault-injection tests fail at) ---


def make_staging(root: Path, prefix: str) -> Path:
    """A new hidden folder in `root` where a version is assembled before it appears."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a server may run as another user
    return tmp


def write_file(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist; no symlink followed) with `data`, flushed to disk and
    world-readable (a server may run as another user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _located(exc, path) from None


def replace_file(path: Path, data: bytes) -> None:
    """Replace `path` by `data` all at once (temp file beside it, fsync, rename, fsync the
    folder): a reader sees the old content or the new, never half of either."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def rename(source: Path, target: Path) -> None:
    """Move a finished folder into place (fails if `target` exists), made durable."""
    try:
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "already exists", str(target))
        os.rename(source, target)
    except OSError as exc:
        raise _located(exc, target) from None
    sync_dir(target.parent)


def remove_tree(path: Path) -> None:
    """Delete a folder so that a crash cannot leave it half there under its own name: renamed to
    a hidden trash name first (one atomic step), then removed."""
    if not path.exists() and not path.is_symlink():
        return
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    sync_dir(path.parent)
    discard(trash)


def discard(path: Path) -> None:
    """Remove a leftover (a hidden temp file or folder); a symlink is removed, never followed."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def sync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


STEPS = ("make_staging", "write_file", "replace_file", "rename", "remove_tree", "discard")
