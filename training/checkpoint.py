"""Resumable training state in one safetensors file; no pickle anywhere.

Tensors (model, switch scores, optimizer buffers, fp16 loss scale, sampler order, RNG states)
are the file's tensors; the phase, step and scalars are JSON in its string metadata. One file
written to a temp name and renamed means a run killed mid-write resumes from the previous
checkpoint, never from tensors of one step and scalars of another. Nothing in it is per rank
(every rank holds the same replica and the same global sampler), so a checkpoint written by N
ranks resumes on any number of ranks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

CHECKPOINT = "checkpoint.safetensors"
PUBLISHED = "published.txt"  # which store version this run became, once it is published


def mark_published(run_dir: Path, version_folder: Path) -> None:
    """Record that the run's result is published, so `--resume` cannot publish it twice."""
    (Path(run_dir) / PUBLISHED).write_text(f"{version_folder}\n")


def published_as(run_dir: Path) -> str | None:
    """The version folder this run was published as, or None."""
    mark = Path(run_dir) / PUBLISHED
    return mark.read_text().strip() if mark.is_file() else None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Per-parameter optimizer buffers, keyed by parameter position."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                out[f"{index}.{key}"] = value
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def scaler_tensors(scaler: torch.amp.GradScaler) -> dict[str, Tensor]:
    """fp16 loss scale and its growth counter (nothing when loss scaling is off)."""
    if not scaler.is_enabled():
        return {}
    state = scaler.state_dict()
    return {
        "scale": torch.tensor(state["scale"], dtype=torch.float64),
        "growth_tracker": torch.tensor(state["_growth_tracker"], dtype=torch.int64),
    }


def load_scaler_tensors(scaler: torch.amp.GradScaler, tensors: dict[str, Tensor]) -> None:
    if not scaler.is_enabled() or not tensors:
        return
    state = scaler.state_dict()
    state.update(scale=float(tensors["scale"]), _growth_tracker=int(tensors["growth_tracker"]))
    scaler.load_state_dict(state)


def save_checkpoint(
    run_dir: Path, groups: dict[str, dict[str, Tensor]], meta: dict[str, Any]
) -> None:
    """Write named tensor groups (e.g. model, switches, optim, sampler) and the JSON scalars."""
    flat = {
        f"{group}/{name}": t.detach().to("cpu").contiguous().clone()
        for group, tensors in groups.items()
        for name, t in tensors.items()
    }
    path = run_dir / CHECKPOINT
    save_atomically(path, flat, metadata={"meta": json.dumps(meta, sort_keys=True)})


def save_atomically(
    path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file under a temp name, fsync, rename: a reader (or a resumed run)
    sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]] | None:
    """The last complete checkpoint of a run, or None when it has none."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    groups: dict[str, dict[str, Tensor]] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["meta"])
        for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
            group, name = key.split("/", 1)
            groups.setdefault(group, {})[name] = fh.get_tensor(key)
    return groups, meta
