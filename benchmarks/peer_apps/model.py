"""What every peer app serves, read the same way by each: the verified graph, its preprocessing.

Set by the peers suites in each peer's environment: BENCH_GRAPHS (JSON: model name -> an ONNX
graph file the suite checked against the version's manifest; several for the ResNet-50 run, as
a user deploying one fine-tuned network per domain), BENCH_PREPROCESS (the domain's Preprocess
as JSON), BENCH_LABELS (its labels as JSON). Only numpy, Pillow, ONNX Runtime and model_store's
torch-free preprocessing are imported, so it runs in any peer's virtual environment.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort

from model_store import Preprocess, preprocess_bytes

GRAPHS: dict[str, str] = json.loads(os.environ["BENCH_GRAPHS"])
PRE = Preprocess(**json.loads(os.environ["BENCH_PREPROCESS"]))
LABELS: list[str] = json.loads(os.environ["BENCH_LABELS"])
MAX_PIXELS = 40_000_000  # the server's default cap on decoded pixels
TOP_K = 5


def session(path: str | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with one intra-op thread (every server runs the same), of
    `path` or of the one graph a single-model app serves."""
    if path is None:
        [path] = GRAPHS.values()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def preprocess(data: bytes) -> np.ndarray:
    """Image bytes -> (3, S, S) float32, model_store's checks and transform."""
    return preprocess_bytes(data, PRE, MAX_PIXELS)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top5(probs: np.ndarray) -> list[dict[str, object]]:
    """One image's best five labels with their softmax scores (ties: the lower index first)."""
    best = np.argsort(-probs, kind="stable")[:TOP_K]
    return [{"label": LABELS[i], "score": float(probs[i])} for i in best]
