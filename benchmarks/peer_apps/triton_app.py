"""Triton Inference Server through PyTriton 0.7.0, as its docs bind a Python model: two model
instances (two infer functions), dynamic batching up to 16 with a 2 ms queue delay, the image as
a BYTES tensor and the softmax scores as the output. PyTriton's wheel carries Triton with only
its Python backend, so ONNX Runtime runs inside the bound function. Clients use the Open
Inference Protocol (KServe v2) at /v2/models/fashion/infer. Run:
`python triton_app.py HTTP_PORT GRPC_PORT METRICS_PORT`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
from model import preprocess, session, softmax
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def make_infer() -> Callable[..., dict[str, np.ndarray]]:
    """One model instance: its own ONNX Runtime session."""
    own = session()

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
    with Triton(config=config) as triton:
        triton.bind(
            model_name="fashion",
            infer_func=[make_infer(), make_infer()],
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=16, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)
            ),
        )
        triton.serve()
