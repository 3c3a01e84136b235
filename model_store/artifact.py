"""One model version on disk: `weights.safetensors` + `manifest.json`, verified before use.

safetensors holds tensors only and has no checksum, so the manifest carries everything else
(spec, budget, labels, preprocessing, measured figures) and the SHA-256 and size of the weights
file, which are checked before the file is parsed. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .network import MultiDomainResNet, build_model
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


def _seal(path: Path) -> None:
    """Flush to disk, and make the file world-readable (safetensors writes it owner-only)."""
    path.chmod(0o644)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_artifact(folder: Path, model: MultiDomainResNet, manifest: Manifest) -> Manifest:
    """Write weights then manifest (with the weights' hash) into an existing empty folder."""
    if manifest.spec != model.spec:
        raise ValueError("manifest.spec must be the model's spec")
    weights = folder / WEIGHTS
    # safetensors refuses shared or strided storage: store one contiguous copy of each tensor.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights), metadata={"format": "pt", "bap_format": str(FORMAT_VERSION)})
    _seal(weights)
    manifest.files = {WEIGHTS: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}}
    path = folder / MANIFEST
    path.write_text(manifest.to_json())
    _seal(path)
    return manifest


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


def read_artifact(folder: Path) -> tuple[Manifest, MultiDomainResNet]:
    """Verify and load one version: the manifest, then hashes, then a strict weight load."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    path = folder / WEIGHTS
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a valid safetensors file ({exc})") from exc
    model = build_model(manifest.spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit the manifest's spec ({exc})") from exc
    if any(not torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
        raise ArtifactError(f"{path}: weights contain NaN or infinity")
    return manifest, model.eval()
