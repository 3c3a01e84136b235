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

GRAPH_DIR = "graphs"


MIXED_KEY = f"{GRAPH_DIR}/mixed.onnx"


def domain_key(domain: str) -> str:
    """The manifest key (path in the version folder) of one domain's graph."""
    return f"{GRAPH_DIR}/domains/{domain}.onnx"


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

    def __init__(self, folder: Path, manifest: Manifest, threads: int | None = None):
        folder = Path(folder)
        names = manifest.spec.domain_names
        missing = [k for k in [*map(domain_key, names), MIXED_KEY] if k not in manifest.files]
        if missing:
            raise ArtifactError(
                f"{folder}: no compiled graphs {missing} in the manifest; export them with "
                f"`python -m model_store export-graphs {manifest.version}`"
            )
        self.domains = {n: make_session(str(folder / domain_key(n)), threads) for n in names}
        self.mixed = make_session(str(folder / MIXED_KEY), threads)
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
