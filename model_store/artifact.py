"""One model version's tensors: `weights.safetensors` written and loaded beside its manifest.

The manifest (manifest.py) is read and every file's SHA-256 checked before the weights are
parsed; loading is strict (every tensor the spec expects, nothing else, all finite). Nothing is
ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .manifest import (
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    ArtifactError,
    Manifest,
    read_manifest,
    seal_file,
    sha256_file,
    verify_files,
)
from .network import MultiDomainResNet, build_model


def write_artifact(folder: Path, model: MultiDomainResNet, manifest: Manifest) -> Manifest:
    """Write weights then manifest (with the weights' hash) into an existing empty folder."""
    if manifest.spec != model.spec:
        raise ValueError("manifest.spec must be the model's spec")
    weights = folder / WEIGHTS
    # safetensors refuses shared or strided storage: store one contiguous copy of each tensor.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights), metadata={"format": "pt", "bap_format": str(FORMAT_VERSION)})
    seal_file(weights)
    manifest.files = {WEIGHTS: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}}
    path = folder / MANIFEST
    path.write_text(manifest.to_json())
    seal_file(path)
    return manifest


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
