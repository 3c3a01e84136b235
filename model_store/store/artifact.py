"""One model version's tensors: `weights.safetensors` beside its manifest.

The weights are loaded from the very bytes whose SHA-256 was checked against the manifest (which
the store's record covers); loading is strict (every tensor the spec expects, nothing else, all
finite). Nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..nets.network import MultiDomainResNet, build_model
from .manifest import FORMAT_VERSION, WEIGHTS, ArtifactError, Manifest
from .stored import StoredVersion, open_folder


def weights_bytes(model: MultiDomainResNet) -> bytes:
    """The network's state as safetensors bytes (one contiguous copy of each tensor: the format
    refuses shared or strided storage)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return save(tensors, metadata={"format": "pt", "bap_format": str(FORMAT_VERSION)})


def load_model(stored: StoredVersion) -> MultiDomainResNet:
    """The network of a verified version, from the checked bytes of its weights, in eval mode."""
    path = stored.folder / WEIGHTS
    try:
        tensors = load(stored.read(WEIGHTS))
    except (SafetensorError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a valid safetensors file ({exc})") from exc
    model = build_model(stored.manifest.spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ArtifactError(
            f"{path}: weights do not fit the manifest's spec ({first[-1][:300]})"
        ) from None
    if any(not torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
        raise ArtifactError(f"{path}: weights contain NaN or infinity")
    return model.eval()


def read_artifact(folder: Path) -> tuple[Manifest, MultiDomainResNet]:
    """Verify and load a published version by its folder (`<store>/<model>/<version>`): the
    manifest against the store's record, then the weights' bytes, then a strict load."""
    stored = open_folder(Path(folder))
    return stored.manifest, load_model(stored)
