"""What both compiled runtimes (ONNX Runtime, OpenVINO) do with a version's graphs: run one
domain's images through its own view, and run a batch that mixes domains.

A mixed batch runs as one view call per domain in it when every domain has a view loaded
(`domain_graphs` views, the default), else as one pass of the union graph. A view holds only its
domain's filters with BN folded into its convs; the union graph computes every kept filter and
applies each image's BN and mask. Measured on the 2-core AMD EPYC, one thread, a batch spread
evenly over four domains, interleaved (2026-12-05 23:58, `experiments/mixed_split.py`):
ResNet-50 at 224 px, β 0.5, batch 16: 504 ms view by view against 884 ms through the union graph
(batch 4: 125 against 186); the bundled 32-px model: 11.2 against 11.5 ms at batch 16, but 3.96
against 3.45 at batch 4 (there the extra calls cost about what the folded BN saves: -3% to +15%).
Where the model is large enough for batching to matter, the views win, so they never load the
union graph either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

from ..store.manifest import Manifest
from .layout import load_graphs, view_domains

Graph = TypeVar("Graph")


def column_slices(manifest: Manifest) -> list[slice]:
    """Domain d's logits in the union graph's output: the columns of slice d."""
    edges = np.cumsum([0, *(len(d.labels) for d in manifest.spec.domains)]).tolist()
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class GraphSet(Generic[Graph]):
    """A version's loaded graphs: `domains`, the views by domain name, and `mixed`, the union
    graph (None when every domain has a view: layout.load_graphs). A runtime says how it loads
    one graph (`load`) and how one runs (`_run_view`, `_run_union`)."""

    def __init__(
        self,
        manifest: Manifest,
        keys: dict[str, str],
        domain_graphs: str,
        load: Callable[[str, int], Graph],
    ):
        views = view_domains(manifest, domain_graphs)
        self.mixed, self.domains = load_graphs(manifest, keys, views, load)
        names = manifest.spec.domain_names
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(names)}
        self.columns = column_slices(manifest)

    def _run_view(self, view: Graph, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_union(self, union: Graph, indices: np.ndarray, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_domain(self, domain: str, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of one domain's images, x (N, 3, H, W) float32: through its own
        view, or the union graph where it has none (view_domains)."""
        if domain in self.domains:
            return self._run_view(self.domains[domain], x)
        index = np.full(len(x), self.index[domain], dtype=np.int64)
        return self._run_union(self.mixed, index, x)[:, self.columns[self.index[domain]]]

    def run_mixed(self, indices: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        """Image i through domain number `indices[i]` (int64): one logits vector per image."""
        if self.mixed is None:
            return self._split(indices, x)
        every_head = self._run_union(self.mixed, indices, x)
        return [every_head[row, self.columns[d]] for row, d in enumerate(indices)]

    def _split(self, indices: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        """One view call per domain present, each image's logits put back in its place."""
        out: list[np.ndarray] = [np.empty(0)] * len(indices)
        for d in np.unique(indices):
            rows = np.flatnonzero(indices == d)
            logits = self._run_view(self.domains[self.names[d]], x[rows])
            for row, image_logits in zip(rows, logits, strict=True):
                out[row] = image_logits
        return out
