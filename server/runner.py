"""The serving hooks as plain functions: setup, decode, predict (batch + unbatch), encode.

No HTTP here. `setup` turns a verified version into a `Served`: per domain, a view that computes
only that domain's own filters (the cheapest path; a batch that mixes domains runs view by view),
or with `domain_graphs` union the pruned union network for every batch. Every path is run once
before the version is served.

Runtime (`runtime` setting): "onnx" runs the version's compiled graphs in ONNX Runtime (proven
equal to the masked network within 1e-4 by tests/model_store/test_graphs.py; 4-8x faster than
torch at batch 1 here), "openvino" the same graphs in OpenVINO (opt-in; fp32 or bf16), "torch"
the torch modules, "auto" ONNX when the version carries graphs.
This module imports no torch: with ONNX Runtime the server runs without it installed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model_store import (
    MIXED_KEY,
    ArtifactError,
    Manifest,
    StoredVersion,
    filter_map,
    open_version,
    preprocess_bytes,
)

from .batching import Batch
from .schemas import Prediction


class ServedSettings(Protocol):
    """What `load_served` reads of server.config.Settings (kept free of pydantic here)."""

    store: Path
    model: str
    runtime: str
    threads: int | None
    precision: str
    domain_graphs: str


class Runtime(Protocol):
    """What runs the batches: model_store's OnnxGraphs, OpenVinoGraphs or TorchRuntime."""

    name: str
    precision: str
    parallel_batches: int  # batches it runs well at once, each on its own calling thread

    def run_domain(self, domain: str, x: np.ndarray) -> np.ndarray: ...

    def run_mixed(self, indices: np.ndarray, x: np.ndarray) -> list[np.ndarray]: ...


@dataclass(eq=False)
class Served:
    """One loaded, verified and warmed version; also the batcher's lane, so compared by identity."""

    manifest: Manifest
    runtime: Runtime
    filters: list[dict[str, Any]]  # model_store.filter_map: the demo page's picture
    load_seconds: float = 0.0
    index: dict[str, int] = field(init=False)  # domain name -> its number in the spec

    def __post_init__(self) -> None:
        self.index = {name: i for i, name in enumerate(self.manifest.spec.domain_names)}

    @property
    def version(self) -> str:
        return self.manifest.version


def default_threads(runtime: str) -> int:
    """The compiled runtimes' default intra-op threads in the server. ONNX Runtime: 1, and as
    many batches at once as there are cores (OnnxGraphs.parallel_batches), so a batch runs on its
    calling thread and the cores go to whichever of the event loop and the batches needs them.
    2-core AMD EPYC, bundled model, wrk, 32 clients: 1,451-1,574 req/s against 1,134 for one
    batch at a time on 1 thread and 1,737-1,843 on 2 threads, which at 1 client fell to 642-665
    from 750-781 (unchanged with two batches at once). OpenVINO (one infer request per graph, so
    one batch at a time): every core but one, which stays with the event loop; 2 threads were
    slower there (3,534 against 4,105 req/s in bf16)."""
    if runtime == "onnx":
        return 1
    return max(1, len(os.sched_getaffinity(0)) - 1)


def load_runtime(
    stored: StoredVersion,
    runtime: str,
    threads: int | None,
    precision: str = "fp32",
    domain_graphs: str = "views",
) -> Runtime:
    """The runtime for a version whose manifest the store's record vouched for. Each file is
    checked on the bytes the runtime then loads; ONNX Runtime needs only the graphs, so torch is
    imported only when the torch modules run. int8 exists only as graphs."""
    manifest = stored.manifest
    if runtime == "openvino":
        threads = threads or default_threads(runtime)
        return _openvino(stored, threads, precision, domain_graphs)
    onnx = runtime == "onnx" or (runtime == "auto" and MIXED_KEY in manifest.files)
    if precision != "fp32" and not onnx:
        raise ArtifactError(
            f"{stored.folder}: {precision} runs only as compiled graphs; this version is served "
            f"by torch (runtime {runtime!r}): use runtime onnx or auto with exported graphs"
        )
    if onnx:
        _require_measured(stored, precision)
        from model_store import OnnxGraphs

        return OnnxGraphs(stored, threads or default_threads("onnx"), precision, domain_graphs)
    if domain_graphs != "views":
        raise ArtifactError(
            f"domain_graphs {domain_graphs!r} chooses between compiled graphs; {stored.folder} "
            "is served by torch: use runtime onnx or openvino with exported graphs"
        )
    try:
        from model_store import TorchRuntime, load_model
    except ImportError as exc:  # the server-only install (the Docker image) has no torch
        raise ArtifactError(
            f"{stored.folder}: has no compiled graphs and this install has no torch ({exc}); "
            f"export them with `python -m model_store export-graphs {manifest.version}` with "
            "torch installed"
        ) from exc
    return TorchRuntime(load_model(stored), threads)


def _require_measured(stored: StoredVersion, precision: str) -> None:
    """A precision other than fp32 is served only with each domain's accuracy on record."""
    if precision == "fp32":
        return
    record = stored.manifest.precisions.get(precision)
    missing = set(stored.manifest.spec.domain_names) - set(record.accuracy if record else {})
    if missing:
        command = "quantize" if precision == "int8" else f"measure-{precision}"
        raise ArtifactError(
            f"{stored.folder}: no measured {precision} accuracy for {sorted(missing)} in the "
            f"manifest; measure it on the test sets first: "
            f"`python -m training {command} --version {stored.manifest.version}`"
        )


def _openvino(stored: StoredVersion, threads: int, precision: str, domain_graphs: str) -> Runtime:
    """OpenVINO on the version's graphs; bf16 only once each domain's accuracy is on record."""
    _require_measured(stored, precision)
    try:
        from model_store import OpenVinoGraphs
    except ImportError as exc:
        raise ArtifactError(
            f"runtime openvino: OpenVINO is not installed ({exc}); `pip install .[openvino]`, "
            "or build the image with --build-arg BAP_EXTRAS=openvino"
        ) from exc
    return OpenVinoGraphs(stored, threads, precision, domain_graphs)


def setup(
    store: Path,
    name: str,
    runtime: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
    domain_graphs: str = "views",
) -> Served:
    """Load CURRENT (sha256-verified, graphs included), build the runtime, warm every path."""
    started = time.monotonic()
    stored = open_version(store, name)
    runner = load_runtime(stored, runtime, threads, precision, domain_graphs)
    served = Served(stored.manifest, runner, filter_map(stored))
    warm_up(served)
    served.load_seconds = time.monotonic() - started
    return served


def load_served(settings: ServedSettings) -> Served:
    """`setup` with the server's settings (store, model, runtime, threads, precision, graphs)."""
    return setup(
        settings.store,
        settings.model,
        settings.runtime,
        settings.threads,
        settings.precision,
        settings.domain_graphs,
    )


def warm_up(served: Served) -> None:
    """Run each domain's view and one mixed batch once, so the first request pays no set-up."""
    names = list(served.index)
    side = served.manifest.spec.input_size
    for path, domains in [("domain", [d]) for d in names] + [("mixed", names)]:
        images = [np.zeros((3, side, side), np.float32) for _ in domains]
        predict(Batch(served, path, domains, images, [0.0] * len(domains)))


def decode(served: Served, domain: str, data: bytes, max_pixels: int) -> np.ndarray:
    """Request bytes -> this domain's network input (raises ImageError / ImageTooLarge)."""
    pre = served.manifest.spec.domains[served.index[domain]].preprocess
    return preprocess_bytes(data, pre, max_pixels)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Along the last axis: one row or a whole (N, classes) batch in one pass."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def predict(batch: Batch) -> list[np.ndarray]:
    """The batcher's run hook: one softmax vector per image, in the batch's order."""
    served: Served = batch.lane
    x = np.stack(batch.payloads)
    if batch.path == "domain":
        if len(set(batch.domains)) != 1:
            raise RuntimeError("a domain-path batch must hold one domain")
        probs = list(_softmax(served.runtime.run_domain(batch.domains[0], x)))
    else:
        indices = np.array([served.index[d] for d in batch.domains], dtype=np.int64)
        probs = [_softmax(row) for row in served.runtime.run_mixed(indices, x)]
    if len(probs) != len(batch.payloads):  # unbatch must give exactly one output per input
        raise RuntimeError(f"{len(probs)} outputs for {len(batch.payloads)} images")
    return probs


def encode(served: Served, domain: str, probs: np.ndarray, top_k: int) -> list[Prediction]:
    """Top-k labels with their softmax scores, best first (ties: the lower index first)."""
    labels = served.manifest.spec.domains[served.index[domain]].labels
    best = np.argsort(-probs, kind="stable")[: min(top_k, len(labels))]
    return [Prediction(label=labels[i], index=int(i), score=float(probs[i])) for i in best]
