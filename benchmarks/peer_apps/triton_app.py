"""Triton Inference Server through PyTriton 0.7.0, as its docs bind a Python model: each model
with BENCH_INSTANCES model instances (infer functions; 2 by default), dynamic batching up to 16
with a 2 ms queue delay, the image as a BYTES tensor and the softmax scores as the output; one
Triton model per graph in BENCH_GRAPHS. PyTriton's wheel carries Triton with only
its Python backend, so ONNX Runtime runs inside the bound function. Clients use the Open
Inference Protocol (KServe v2) at /v2/models/{model}/infer. Run:
`python triton_app.py HTTP_PORT GRPC_PORT METRICS_PORT`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
from model import GRAPHS, preprocess, session, softmax
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def make_infer(path: str) -> Callable[..., dict[str, np.ndarray]]:
    """One model instance: its own ONNX Runtime session."""
    own = session(path)

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        x = np.stack([preprocess(bytes(row[0])) for row in image])
        return {"probabilities": softmax(own.run(None, {"x": x})[0]).astype(np.float32)}

    return infer


if __name__ == "__main__":
    http, grpc, metrics = (int(p) for p in sys.argv[1:4])
    config = TritonConfig(
        http_address="127.0.0.1", http_port=http, grpc_address="127.0.0.1", grpc_port=grpc,
        metrics_port=metrics,
    )  # fmt: skip
    instances = int(os.environ.get("BENCH_INSTANCES", "2"))
    with Triton(config=config) as triton:
        for name, path in GRAPHS.items():
            triton.bind(
                model_name=name,
                infer_func=[make_infer(path) for _ in range(instances)],
                inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
                config=ModelConfig(
                    max_batch_size=16, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)
                ),
            )
        triton.serve()
