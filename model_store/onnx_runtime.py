"""Run a version's exported graphs (see graphs.py) in ONNX Runtime: numpy in, logits out.

The sessions are built from the verified files of the version folder; each session runs
with `threads` intra-op threads (None: ONNX Runtime's default, one per core) and sequential
execution, since the server runs one batch at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .manifest import ArtifactError, Manifest

# No usage telemetry from a model server (ONNX Runtime 1.29+ sends it from Linux builds too;
# the Docker image also sets ORT_DISABLE_TELEMETRY=1, which acts before the runtime starts).
ort.disable_telemetry_events()

GRAPH_DIR = "graphs"
PRECISIONS = ("fp32", "int8")  # int8: `python -m training quantize` adds graphs/int8/...


def _root(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return GRAPH_DIR if precision == "fp32" else f"{GRAPH_DIR}/{precision}"


def domain_key(domain: str, precision: str = "fp32") -> str:
    """The manifest key (path in the version folder) of one domain's graph."""
    return f"{_root(precision)}/domains/{domain}.onnx"


def mixed_key(precision: str = "fp32") -> str:
    """The manifest key of the mixed union network's graph."""
    return f"{_root(precision)}/mixed.onnx"


MIXED_KEY = mixed_key()


def make_session(model: str | bytes, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a graph (file path or bytes), every optimisation on."""
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxGraphs:
    """One session per domain's own view and one for the mixed union network."""

    name = "onnx"

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        threads: int | None = None,
        precision: str = "fp32",
    ):
        folder, names = Path(folder), manifest.spec.domain_names
        keys = {n: domain_key(n, precision) for n in names}
        missing = [k for k in [*keys.values(), mixed_key(precision)] if k not in manifest.files]
        if missing:
            v = manifest.version
            make = f"model_store export-graphs {v}"
            if precision != "fp32":
                make = f"training quantize --version {v}"
            raise ArtifactError(
                f"{folder}: no {precision} graphs {missing} in the manifest; make them with "
                f"`python -m {make}`"
            )
        self.precision = precision
        self.domains = {n: make_session(str(folder / keys[n]), threads) for n in names}
        self.mixed = make_session(str(folder / mixed_key(precision)), threads)
        counts = [len(d.labels) for d in manifest.spec.domains]
        self.columns = np.cumsum([0, *counts])  # domain d's logits: columns[d]:columns[d + 1]

    def run_domain(self, domain: str, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of one domain's images, x (N, 3, H, W) float32."""
        return self.domains[domain].run(None, {"x": x})[0]

    def run_mixed(self, indices: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        """Image i through domain number `indices[i]` (int64): one logits vector per image."""
        every_head = self.mixed.run(None, {"x": x, "domains": indices})[0]
        cols = self.columns
        return [every_head[row, cols[d] : cols[d + 1]] for row, d in enumerate(indices)]
