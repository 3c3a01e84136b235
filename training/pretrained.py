"""Start a network from a torchvision or timm ResNet state dict on disk (`pretrained: PATH`).

torchvision and timm name a ResNet's tensors alike (`conv1`, `bn1`, `layer{1-4}.{i}.conv{1,2,3}`,
`.bn{1,2,3}`, `layer{2-4}.0.downsample.{0,1}`, `fc`), and our torchvision-layout networks use the
same names, so the mapping is key for key: every conv loads as it is; every BN's affine and
running statistics start every domain's BN (one row per domain, all equal); `fc.*` and the BN
step counters are ignored (each domain has its own head). A file that does not fit is refused
with the first key that differs, before any weight changes. Nothing is downloaded: the user
supplies the file (ImageNet weights carry their own terms).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from model_store import ArtifactError, DomainBatchNorm, MultiDomainResNet

KEY_FORMAT = "torchvision"  # timm's ResNets use the same key names
IGNORED = ("fc.weight", "fc.bias")
FORMATS = {".pth": "pth", ".pt": "pth", ".safetensors": "safetensors"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A flat name -> tensor dict from a .pth (read with weights_only: no code runs) or a
    .safetensors file."""
    kind = FORMATS.get(path.suffix)
    if kind is None:
        raise ArtifactError(f"{path}: pretrained weights must be {', '.join(FORMATS)}")
    try:
        if kind == "safetensors":
            return load_file(str(path))
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ArtifactError(
            f"{path}: cannot read pretrained weights: it holds more than tensors, which "
            "weights_only loading refuses to unpickle"
        ) from exc
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path}: cannot read pretrained weights ({first})") from exc
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()
    ):
        raise ArtifactError(f"{path}: not a state dict (a flat mapping of names to tensors)")
    return tensors


@torch.no_grad()
def load_pretrained(model: MultiDomainResNet, path: Path) -> dict[str, str]:
    """Load a torchvision/timm ResNet state dict into `model` (every domain's BN from the
    file's BN); returns what the training record keeps: file, SHA-256, arch, key format."""
    path = Path(path)
    spec = model.spec
    if spec.architecture.family != "torchvision":
        raise ArtifactError(
            f"{spec.arch} has no torchvision or timm counterpart; start it from one of our "
            "own networks with backbone="
        )
    tensors = read_state_dict(path)
    norms = {
        f"{name}.{t}"
        for name, m in model.named_modules()
        if isinstance(m, DomainBatchNorm)
        for t in ("weight", "bias", "running_mean", "running_var")
    }
    masks = {mask for _, _, mask, _ in model.gate_names()}
    fit = f"{spec.arch} at width {spec.width:g}"
    loaded = {}
    for key, own in model.state_dict().items():
        if key.startswith("heads.") or key in masks:
            continue
        need = own.shape[1:] if key in norms else own.shape
        if key not in tensors:
            raise ArtifactError(f"{path}: no {key} (shape {tuple(need)}) for {fit}")
        if tensors[key].shape != need:
            raise ArtifactError(
                f"{path}: {key} has shape {tuple(tensors[key].shape)}, {fit} needs {tuple(need)}"
            )
        loaded[key] = tensors[key].to(own.dtype).expand_as(own) if key in norms else tensors[key]
    for key, value in tensors.items():
        if key not in loaded and key not in IGNORED and not key.endswith(".num_batches_tracked"):
            raise ArtifactError(f"{path}: {key} (shape {tuple(value.shape)}) is not part of {fit}")
    model.load_state_dict(loaded, strict=False)
    return {
        "file": str(path),
        "sha256": _sha256(path),
        "arch": spec.arch,
        "keys": KEY_FORMAT,
        "format": FORMATS[path.suffix],
    }
