"""bf16 through OpenVINO for a published version: its accuracy measured on the full test sets and
recorded in the manifest (`training.bf16`), the condition for serving it in bf16.

bf16 needs no new files: OpenVINO computes the version's own fp32 graphs with bf16 inference
precision. What it costs in accuracy is a property of those graphs and of OpenVINO's kernels, so
each domain's whole test split runs through the graphs in fp32 and in bf16, both in OpenVINO, and
the record names the OpenVINO version and the CPU. `/domains` shows the bf16 figure.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from torch import Tensor

from model_store import (
    Manifest,
    add_files,
    compile_graph,
    domain_key,
    read_artifact,
    version_path,
)

from .config import TrainConfig
from .evaluate import split_accuracy
from .sources import load_domain

log = logging.getLogger(__name__)


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _logits(request: ov.InferRequest) -> Callable[[Tensor], np.ndarray]:
    return lambda x: request.infer({"x": x.numpy()})[0]


def measure_bf16(store: Path, name: str, version: str | None = None) -> Manifest:
    """Record each domain's test accuracy through OpenVINO in fp32 and bf16; returns the
    updated manifest (refused, with the reason, on a CPU without native bf16)."""
    folder = version_path(store, name, version)
    manifest, _ = read_artifact(folder)  # verifies every listed file, graphs included
    config = TrainConfig.from_record(manifest.training["config"])
    core = ov.Core()
    record: dict[str, Any] = {
        "runtime": f"openvino {ov.get_version()}",
        "cpu": cpu_name(),
        "domains": {},
    }
    for index, entry in enumerate(config.domains):
        data = load_domain(entry, config.resize, config.crop)
        pre = manifest.spec.domains[index].preprocess
        graph = folder / domain_key(data.name)
        accuracy = {}
        for precision in ("fp32", "bf16"):
            request = compile_graph(core, graph, None, precision).create_infer_request()
            accuracy[f"accuracy_{precision}"] = round(
                split_accuracy(_logits(request), data, pre), 6
            )
        record["domains"][data.name] = accuracy
        log.info("bf16 domain=%s %s", data.name, accuracy)
    manifest.training["bf16"] = record
    return add_files(folder, manifest, {})
