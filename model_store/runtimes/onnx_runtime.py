"""Run a version's exported graphs (see graphs.py) in ONNX Runtime: numpy in, logits out.

The sessions are built from the verified files of the version folder; each session runs
with `threads` intra-op threads (None: ONNX Runtime's default, one per core) and sequential
execution of its nodes. A session may run several batches at once, one per calling thread (ONNX
Runtime's Run is thread-safe): with one intra-op thread a batch runs on its caller, so the server
runs one batch per core (`parallel_batches`). Their idle threads sleep instead of
spinning: a version has one session per domain plus the mixed one, each with its own pool, and
a pool left spinning after its batch takes the cores from the session that runs next. Measured
on the 2-core AMD EPYC, 64 px width 1 batch 32, five sessions run in turn: the full network took
153 ms with spinning and 124 without (118 and 123 run alone), a pruned view 98 and 67 ms.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..store.manifest import ArtifactError
from ..store.stored import StoredVersion
from .graph_set import GraphSet
from .layout import graph_keys

# No usage telemetry from a model server (ONNX Runtime 1.29+ sends it from Linux builds too;
# the Docker image also sets ORT_DISABLE_TELEMETRY=1, which acts before the runtime starts).
ort.disable_telemetry_events()


def check_classes(path: Path, width: object, classes: int) -> None:
    """A graph's output width must be the manifest's label count (a label without a logit, or
    a logit without a label, would answer wrongly or fail per request)."""
    if width != classes:
        raise ArtifactError(f"{path}: outputs {width} logits, the manifest has {classes} labels")


def make_session(model: str | bytes, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a graph (file path or bytes), every optimisation on, idle
    threads asleep (see above), and no memory arena: each session's arena keeps the peak of its
    largest batch for good, once per session (every view and the union graph). ResNet-50 at
    224 px, one batch of 16 through the union graph: +400 MiB kept with the arena, +52 MiB
    without; the bundled fashion view ran as fast without it (1.05 vs 1.08 ms at batch 1, 81.8
    vs 83.5 at 16; freed buffers over 1 MiB go back to the OS, see server/allocator.py)."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    release_model_bytes(session)
    return session


def release_model_bytes(session: ort.InferenceSession) -> None:
    """Drop the copy of the graph's bytes that ONNX Runtime's Python wrapper keeps for good (its
    own TODO: "bad as we're holding the memory indefinitely"), kept only to rebuild the session
    on a provider fallback that a CPU-only session never takes. The session runs from its own
    weights. ResNet-50 224 px, four β 0.5 views: 388 -> 253 MiB RSS; one unpruned: 285 -> 195."""
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None


class OnnxGraphs(GraphSet[ort.InferenceSession]):
    """One session per domain's own view, and one for the union network where needed."""

    name = "onnx"

    def __init__(
        self,
        stored: StoredVersion,
        threads: int | None = None,
        precision: str = "fp32",
        domain_graphs: str = "views",
    ):
        manifest = stored.manifest
        keys = graph_keys(stored.folder, manifest, precision)
        self.precision = precision
        cores = len(os.sched_getaffinity(0))
        self.parallel_batches = max(1, cores // (threads or cores))

        def session(key: str, classes: int) -> ort.InferenceSession:
            made = make_session(stored.read(key), threads)  # the bytes that were checked
            check_classes(stored.folder / key, made.get_outputs()[0].shape[-1], classes)
            return made

        super().__init__(manifest, keys, domain_graphs, session)

    def _run_view(self, view: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        return view.run(None, {"x": x})[0]

    def _run_union(
        self, union: ort.InferenceSession, indices: np.ndarray, x: np.ndarray
    ) -> np.ndarray:
        return union.run(None, {"x": x, "domains": indices})[0]
