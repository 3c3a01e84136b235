"""Compiled inference graphs (ONNX) of a stored version, for runtimes without torch.

Two kinds, both with a dynamic batch dimension:
- `graphs/domains/<domain>.onnx`: that domain's own view (only its active filters, the all-ones mask
  gone): input `x` (N, 3, H, W) float32, output `logits` (N, classes).
- `graphs/mixed.onnx`: the pruned union network for batches that mix domains: inputs `x` and
  `domains` (N,) int64, output `logits` (N, sum of every domain's classes), every head applied
  to every image; image i's logits are the columns of domain `domains[i]`.
  Computing all heads costs one small matrix product and keeps the graph free of control flow.

Each block's filters are padded (exact zeros, `pad_filters`) to a whole number of CHANNEL_BLOCKs.

The files go into a version (`publish_version(..., extra_files=export_graphs(model))`) and its
manifest's `files`, so they are verified by the same SHA-256 check as the weights. Exported
with torch's TorchScript-based ONNX exporter in eval mode (BN then uses the running
statistics; ONNX Runtime folds it into the convs at load).
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import Tensor, nn

from ..nets.layers import DomainRoute, MixedRoute
from ..nets.network import MultiDomainResNet
from ..nets.slicing import domain_view, pad_filters
from .layout import MIXED_KEY, domain_key

OPSET = 17
# ONNX Runtime's CPU convolutions take their blocked (NCHWc) kernels only when channel counts are
# whole SIMD blocks (16 floats with AVX-512, 8 with AVX2), and pruning leaves arbitrary counts. At
# 64 px, width 1, beta 0.5, batch 32, one thread (2-core Xeon, AVX-512): a pruned view went from
# 1.74x to 2.08x faster than the unpruned network (the MACs ratio is 2.20) padded to 16, for
# at most 15 zero filters per block.
CHANNEL_BLOCK = 16


class _OwnFilters(DomainRoute):
    """Domain 0 of a view that holds only its own filters: no mask to multiply (a padded filter
    is zero by its BN, see pad_filters)."""

    def __init__(self) -> None:
        super().__init__(0)

    def mask(self, block_index: int, stored: Tensor) -> None:  # type: ignore[override]
        return None


class _DomainGraph(nn.Module):
    def __init__(self, view: MultiDomainResNet):
        super().__init__()
        self.view = view

    def forward(self, x: Tensor) -> Tensor:
        return self.view.run(x, _OwnFilters())  # type: ignore[return-value]


class _AllHeads(MixedRoute):
    """A mixed route whose head applies every domain's head to every image (no control flow)."""

    def head(self, heads: nn.ModuleList, features: Tensor) -> Tensor:  # type: ignore[override]
        return torch.cat([h(features) for h in heads], dim=1)


class _MixedGraph(nn.Module):
    def __init__(self, model: MultiDomainResNet):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, domains: Tensor) -> Tensor:
        return self.model.run(x, _AllHeads(domains))  # type: ignore[return-value]


def _onnx_bytes(module: nn.Module, inputs: tuple[Tensor, ...], names: list[str]) -> bytes:
    buffer = io.BytesIO()
    axes = {n: {0: "batch"} for n in [*names, "logits"]}
    with warnings.catch_warnings():  # the exporter's deprecation and tracer notes: not ours
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            inputs,
            buffer,
            dynamo=False,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
        )
    return buffer.getvalue()


@torch.no_grad()
def domain_graph(view: MultiDomainResNet) -> bytes:
    """The ONNX graph of one domain's view (`domain_view`): input `x`, output `logits`."""
    if len(view.spec.domains) != 1 or any(not bool((m == 1).all()) for m in view.gated_masks()):
        raise ValueError("a domain graph needs a one-domain view, every filter on (domain_view)")
    side = view.spec.input_size
    padded = pad_filters(view.eval(), CHANNEL_BLOCK)
    return _onnx_bytes(_DomainGraph(padded), (torch.zeros(2, 3, side, side),), ["x"])


@torch.no_grad()
def export_graphs(model: MultiDomainResNet) -> dict[str, bytes]:
    """Every domain's graph and the mixed graph of the stored (pruned, eval) network of a
    version, by manifest key."""
    model = model.eval()
    side = model.spec.input_size
    graphs = {
        domain_key(name): domain_graph(domain_view(model, d))
        for d, name in enumerate(model.spec.domain_names)
    }
    mixed_inputs = (torch.zeros(2, 3, side, side), torch.zeros(2, dtype=torch.long))
    mixed = _MixedGraph(pad_filters(model, CHANNEL_BLOCK))
    graphs[MIXED_KEY] = _onnx_bytes(mixed, mixed_inputs, ["x", "domains"])
    return graphs
