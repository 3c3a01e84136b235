"""The serving hooks as plain functions: setup, decode, predict (batch + unbatch), encode.

No HTTP here. `setup` turns a verified version into a `Served`: the pruned union network (for
batches that mix domains) and, per domain, a view that computes only that domain's own filters
(the cheapest path for a one-domain batch). Every path is run once before the version is served.

Runtime (`runtime` setting): "onnx" runs the version's compiled graphs in ONNX Runtime (proven
equal to the masked network within 1e-4 by tests/model_store/test_graphs.py; 4-8x faster than
torch at batch 1 here), "torch" the torch modules, "auto" ONNX when the version carries graphs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model_store import (
    MIXED_KEY,
    Manifest,
    MultiDomainResNet,
    OnnxGraphs,
    domain_view,
    preprocess_bytes,
    read_artifact,
    version_path,
)

from .batching import Batch
from .schemas import Prediction


@dataclass(eq=False)
class Served:
    """One loaded, verified and warmed version; also the batcher's lane, so compared by identity."""

    manifest: Manifest
    model: MultiDomainResNet
    views: dict[str, MultiDomainResNet]
    graphs: OnnxGraphs | None = None  # set: batches run in ONNX Runtime, not torch
    load_seconds: float = 0.0
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {name: i for i, name in enumerate(self.manifest.spec.domain_names)}

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def runtime(self) -> str:
        return "torch" if self.graphs is None else "onnx"


def configure_threads(threads: int | None) -> None:
    """Torch's intra-op threads for the calling thread (None keeps torch's default).

    The count is per thread (OpenMP), so this runs as the inference thread's initializer.
    On a shared, busy machine fewer threads can be several times faster: spinning OpenMP
    workers that wait for a core hold up the whole forward pass.
    """
    if threads is not None:
        torch.set_num_threads(threads)


def setup(store: Path, name: str, runtime: str = "auto", threads: int | None = None) -> Served:
    """Load CURRENT (sha256-verified, graphs included), build the runtime, warm every path."""
    started = time.monotonic()
    folder = version_path(store, name)
    manifest, model = read_artifact(folder)  # CURRENT, every listed file's SHA-256 checked
    # channels_last lets oneDNN pick its fast conv layouts: 1.23x at batch 1, 1.12x at batch 32
    # on the served network (docs/benchmarks.md, levers).
    model = model.eval().to(memory_format=torch.channels_last)
    views = {
        d: domain_view(model, i).eval().to(memory_format=torch.channels_last)
        for i, d in enumerate(manifest.spec.domain_names)
    }
    graphs = None
    if runtime == "onnx" or (runtime == "auto" and MIXED_KEY in manifest.files):
        graphs = OnnxGraphs(folder, manifest, threads)
    served = Served(manifest, model, views, graphs)
    warm_up(served)
    served.load_seconds = time.monotonic() - started
    return served


def warm_up(served: Served) -> None:
    """Run each domain's view and one mixed batch once, so the first request pays no set-up."""
    names = list(served.index)
    side = served.manifest.spec.input_size
    for path, domains in [("domain", [d]) for d in names] + [("mixed", names)]:
        images = [torch.zeros(3, side, side) for _ in domains]
        predict(Batch(served, path, domains, images, [0.0] * len(domains)))


def decode(served: Served, domain: str, data: bytes, max_pixels: int) -> Tensor:
    """Request bytes -> this domain's network input (raises ImageError / ImageTooLarge)."""
    pre = served.manifest.spec.domains[served.index[domain]].preprocess
    return preprocess_bytes(data, pre, max_pixels)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def _torch_logits(served: Served, batch: Batch) -> list[np.ndarray]:
    x = torch.stack(batch.payloads).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if batch.path == "domain":
            logits = list(served.views[batch.domains[0]](x, 0))
        else:
            indices = torch.tensor([served.index[d] for d in batch.domains], dtype=torch.long)
            logits = served.model.forward_mixed(x, indices)
    return [row.float().numpy() for row in logits]


def _onnx_logits(graphs: OnnxGraphs, batch: Batch) -> list[np.ndarray]:
    x = torch.stack(batch.payloads).numpy()
    if batch.path == "domain":
        return list(graphs.run_domain(batch.domains[0], x))
    return graphs.run_mixed(batch.domains, x)


def predict(batch: Batch) -> list[np.ndarray]:
    """The batcher's run hook: one softmax vector per image, in the batch's order."""
    served: Served = batch.lane
    if batch.path == "domain" and len(set(batch.domains)) != 1:
        raise RuntimeError("a domain-path batch must hold one domain")
    if served.graphs is None:
        logits = _torch_logits(served, batch)
    else:
        logits = _onnx_logits(served.graphs, batch)
    probs = [_softmax(row) for row in logits]
    if len(probs) != len(batch.payloads):  # unbatch must give exactly one output per input
        raise RuntimeError(f"{len(probs)} outputs for {len(batch.payloads)} images")
    return probs


def encode(served: Served, domain: str, probs: np.ndarray, top_k: int) -> list[Prediction]:
    """Top-k labels with their softmax scores, best first (ties: the lower index first)."""
    labels = served.manifest.spec.domains[served.index[domain]].labels
    best = np.argsort(-probs, kind="stable")[: min(top_k, len(labels))]
    return [Prediction(label=labels[i], index=int(i), score=float(probs[i])) for i in best]
