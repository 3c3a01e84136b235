"""Run a version's exported graphs (the fp32 ONNX files of graphs.py) in OpenVINO: numpy in, logits
out. An opt-in runtime (`pip install .[openvino]`), for where it beats ONNX Runtime.

Why it exists: on this project's 2-core AMD EPYC (avx512_bf16) the bundled fashion view at batch
16 on one thread took 5.04 ms in ONNX Runtime, 4.22 ms in OpenVINO fp32 and 2.47 ms with
OpenVINO's bf16 inference precision. fp32 is the same network (tests: within 1e-4 of torch);
bf16 rounds activations and weights to 8 mantissa bits, so its accuracy is measured on the full
test sets (`python -m training measure-bf16`) and a version is served in bf16 only once that
record exists. bf16 needs a CPU with native bf16 (avx512_bf16 or AMX): elsewhere OpenVINO would
quietly compute in f32, so this module refuses instead.

One compiled model and one infer request per graph: the server runs one batch at a time on one
inference thread (`parallel_batches` 1). Reading the ONNX files calls no telemetry (only
OpenVINO's converter tools send any).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from ..store.manifest import ArtifactError
from ..store.stored import StoredVersion
from .graph_set import GraphSet
from .layout import graph_keys
from .onnx_runtime import check_classes

HINTS = {"fp32": "f32", "bf16": "bf16"}  # ours -> OpenVINO's INFERENCE_PRECISION_HINT


def compile_graph(
    core: ov.Core, graph: bytes, path: Path, threads: int | None, precision: str = "fp32"
) -> ov.CompiledModel:
    """One graph (the checked bytes of the file at `path`) compiled for the CPU at `precision`,
    one stream (the latency setting)."""
    if precision not in HINTS:
        raise ValueError(f"precision {precision!r}; OpenVINO runs: {', '.join(HINTS)}")
    config: dict[str, object] = {
        "INFERENCE_PRECISION_HINT": HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(graph), "CPU", config)
    used = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    if used != HINTS[precision]:
        raise ArtifactError(
            f"OpenVINO computes {path.name} in {used}, not {precision}: this CPU has no native "
            f"{precision} (bf16: avx512_bf16 or AMX); serve fp32"
        )
    return compiled


class OpenVinoGraphs(GraphSet[ov.InferRequest]):
    """One compiled model per domain's own view, and one for the union network where needed."""

    name = "openvino"

    def __init__(
        self,
        stored: StoredVersion,
        threads: int | None = None,
        precision: str = "fp32",
        domain_graphs: str = "views",
    ):
        manifest, core = stored.manifest, ov.Core()
        keys = graph_keys(stored.folder, manifest)  # the fp32 graphs, any precision

        def request(key: str, classes: int) -> ov.InferRequest:
            path = stored.folder / key
            compiled = compile_graph(core, stored.read(key), path, threads, precision)
            check_classes(path, compiled.outputs[0].get_partial_shape()[-1].get_length(), classes)
            return compiled.create_infer_request()

        self.precision = precision
        self.parallel_batches = 1  # one infer request per graph: two batches would share it
        super().__init__(manifest, keys, domain_graphs, request)

    # infer() returns copies: a request's output buffer is reused by its next call
    def _run_view(self, view: ov.InferRequest, x: np.ndarray) -> np.ndarray:
        return view.infer({"x": x})[0]

    def _run_union(self, union: ov.InferRequest, indices: np.ndarray, x: np.ndarray) -> np.ndarray:
        return union.infer({"x": x, "domains": indices})[0]
