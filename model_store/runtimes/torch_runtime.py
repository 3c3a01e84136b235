"""The torch network of a version as a runtime with `OnnxGraphs`' interface: numpy in, logits out.

For versions without compiled graphs (and as the reference the graphs are tested against). Each
domain gets a view that computes only its own filters (the cheapest path for a one-domain
batch); batches that mix domains run the pruned union network once.
"""

from __future__ import annotations

import numpy as np
import torch

from ..nets.network import MultiDomainResNet
from ..nets.slicing import domain_view


def _channels_last(model: MultiDomainResNet) -> MultiDomainResNet:
    # channels_last lets oneDNN pick its fast conv layouts: 1.23x at batch 1, 1.12x at batch 32
    # on the served network (docs/benchmarks.md, levers).
    return model.eval().to(memory_format=torch.channels_last)


class TorchRuntime:
    """Every domain's view and the mixed union network, in torch."""

    name = "torch"
    precision = "fp32"
    parallel_batches = 1  # torch's own intra-op pool already spans the cores

    def __init__(self, model: MultiDomainResNet, threads: int | None = None):
        self.model = _channels_last(model)
        self.views = {
            name: _channels_last(domain_view(self.model, d))
            for d, name in enumerate(model.spec.domain_names)
        }
        self.threads = threads

    def _input(self, x: np.ndarray) -> torch.Tensor:
        # torch's intra-op thread count belongs to the thread that runs the batches: set it there.
        # On a shared, busy machine fewer threads can be several times faster.
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run_domain(self, domain: str, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of one domain's images, x (N, 3, H, W) float32."""
        return self.views[domain](self._input(x), 0).float().numpy()

    @torch.inference_mode()
    def run_mixed(self, indices: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        """Image i through domain number `indices[i]`: one logits vector per image."""
        logits = self.model.forward_mixed(self._input(x), torch.from_numpy(indices))
        return [row.float().numpy() for row in logits]
