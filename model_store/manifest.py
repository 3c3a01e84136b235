"""A version's manifest and file checks: everything about a stored version except its tensors.

Torch-free on purpose: the server running compiled graphs reads, verifies and serves a version
with this module alone. safetensors holds tensors only and has no checksum, so the manifest
carries everything else (spec, budget, labels, preprocessing, measured figures) and the SHA-256
and size of every file of the version, which are checked before any file is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .spec import ModelSpec, SpecError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


class ArtifactError(RuntimeError):
    """A stored version that must not be served; the message names the file and the problem."""


@dataclass
class DomainMetrics:
    """What one domain measured at publish time (accuracy on its test split)."""

    accuracy: float | None
    parameters: int
    macs: int
    cost_fraction: float  # in the budget's unit, against the single-domain backbone


@dataclass
class Manifest:
    """Everything about a version except its tensors."""

    name: str
    spec: ModelSpec
    budget: float
    budget_unit: str
    domains: dict[str, DomainMetrics]
    totals: dict[str, float]
    training: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: expected a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{source}: format_version {data.get('format_version')!r} is not supported "
                f"(this build reads {FORMAT_VERSION})"
            )
        try:
            data["spec"] = ModelSpec.from_dict(data["spec"])
            data["domains"] = {k: DomainMetrics(**v) for k, v in data["domains"].items()}
            manifest = cls(**data)
        except (KeyError, TypeError, SpecError) as exc:
            raise ArtifactError(f"{source}: malformed manifest ({exc})") from exc
        if set(manifest.domains) != set(manifest.spec.domain_names):
            raise ArtifactError(f"{source}: metrics name other domains than the spec")
        return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seal_file(path: Path) -> None:
    """Flush a written file to disk and make it world-readable (a server may run as another
    user; safetensors and mkstemp write owner-only)."""
    path.chmod(0o644)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` all at once (temp file beside it, fsync, rename): a reader sees
    the old content or the new, never half of either."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        seal_file(Path(tmp))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read manifest ({exc})") from exc
    return Manifest.from_json(text, path)


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists exists with the recorded size and SHA-256."""
    if WEIGHTS not in manifest.files:
        raise ArtifactError(f"{folder / MANIFEST}: lists no {WEIGHTS}")
    for name, meta in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing")
        size = path.stat().st_size
        if size != meta.get("bytes"):
            raise ArtifactError(
                f"{path}: {size} bytes, manifest says {meta.get('bytes')} (truncated?)"
            )
        if sha256_file(path) != meta.get("sha256"):
            raise ArtifactError(
                f"{path}: SHA-256 does not match the manifest (corrupt or tampered)"
            )


def add_files(folder: Path, manifest: Manifest, files: dict[str, bytes]) -> Manifest:
    """Add files (key: path in the version folder) to a published version and list them (size,
    SHA-256) in its manifest, which is then replaced atomically. The one change a published
    version accepts: new files (compiled graphs) and what was measured of them; the files it
    already lists are never altered."""
    clash = sorted(set(files) & set(manifest.files))
    if clash:
        raise ArtifactError(f"{folder}: {clash} already listed; a version's files never change")
    for key, data in files.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        manifest.files[key] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    write_atomic(folder / MANIFEST, manifest.to_json().encode())
    return manifest
