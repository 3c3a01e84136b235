"""Every architecture's exported ONNX graphs (fp32) give the masked unpruned network's logits:
each domain's own view, and the mixed graph per image, in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from model_store import MIXED_KEY, build_model, domain_key, prune_to_union
from model_store.runtimes.graphs import export_graphs
from tests.conftest import randomize, tiny_input, tiny_spec

TOLERANCE = 1e-4


def _session(graph: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def test_fp32_graphs_equal_the_masked_network(arch: str) -> None:
    masked = randomize(build_model(tiny_spec(arch=arch)), 0.5, seed=3)
    graphs = export_graphs(prune_to_union(masked).eval())
    x = tiny_input(masked.spec, 3)
    order = torch.tensor([2, 0, 1])
    mixed = _session(graphs[MIXED_KEY]).run(None, {"x": x.numpy(), "domains": order.numpy()})[0]
    with torch.no_grad():
        expected = [masked(x, d).numpy() for d in range(len(masked.spec.domains))]
    columns = np.cumsum([0] + [e.shape[1] for e in expected])
    for d, name in enumerate(masked.spec.domain_names):
        got = _session(graphs[domain_key(name)]).run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, expected[d], atol=TOLERANCE, rtol=0)
    for row, d in enumerate(order.tolist()):
        got = mixed[row, columns[d] : columns[d + 1]]
        np.testing.assert_allclose(got, expected[d][row], atol=TOLERANCE, rtol=0)
