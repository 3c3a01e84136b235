"""bf16 through OpenVINO for a published version: its accuracy measured on the full test sets and
recorded in a version derived from the measured one (`precisions["bf16"]`), the condition for
serving it in bf16.

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

import numpy as np
import openvino as ov
from torch import Tensor

from model_store import (
    Manifest,
    PrecisionRecord,
    Publication,
    compile_graph,
    derive_version,
    domain_key,
    open_version,
)

from .evaluate import split_accuracy
from .stored_data import stored_domains

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


def measure_bf16(
    store: Path, name: str, version: str | None = None
) -> tuple[Publication, Manifest]:
    """A version derived from `version` (CURRENT by default) with each domain's test accuracy
    through OpenVINO in fp32 and bf16 on record (refused, with the reason, on a CPU without
    native bf16)."""
    stored = open_version(store, name, version)
    core = ov.Core()
    accuracy: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}}
    measured = {}
    for _, spec, data in stored_domains(stored.manifest):
        key = domain_key(spec.name)
        graph, path = stored.read(key), stored.folder / key
        measured[key] = stored.manifest.files[key]["sha256"]
        for precision in ("fp32", "bf16"):
            request = compile_graph(core, graph, path, None, precision).create_infer_request()
            accuracy[precision][spec.name] = round(
                split_accuracy(_logits(request), data, spec.preprocess), 6
            )
        log.info("bf16 domain=%s %s", spec.name, {p: a[spec.name] for p, a in accuracy.items()})
    record = PrecisionRecord(
        runtime=f"openvino {ov.get_version()}",
        cpu=cpu_name(),
        files=measured,
        accuracy_fp32=accuracy["fp32"],
        accuracy=accuracy["bf16"],
    )
    return derive_version(store, name, stored.folder.name, {}, {"bf16": record})
