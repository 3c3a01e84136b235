"""The server's work without HTTP: decode, stack, forward on the same path, softmax.

The same store and version the server loaded, run the way the server runs a batch (a domain's
own filters for a one-domain batch, `forward_mixed` for a mixed one), so HTTP throughput divided
by this is the server's overhead ratio at the batch size it formed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from model_store import domain_view, load_version, preprocess_bytes

from .common import time_calls


class InProcess:
    def __init__(self, store: Path, name: str):
        self.manifest, self.model = load_version(store, name)
        names = self.manifest.spec.domain_names
        self.index = {d: i for i, d in enumerate(names)}
        self.views = {d: domain_view(self.model, i).eval() for d, i in self.index.items()}

    def decode(self, domain: str, image: bytes) -> Tensor:
        pre = self.manifest.spec.domains[self.index[domain]].preprocess
        return preprocess_bytes(image, pre, 10**8)

    def forward(self, domains: list[str], x: Tensor, mixed: bool) -> list[Tensor]:
        with torch.inference_mode():
            if not mixed:
                logits = list(self.views[domains[0]](x, 0))
            else:
                index = torch.tensor([self.index[d] for d in domains], dtype=torch.long)
                logits = self.model.forward_mixed(x, index)
            return [row.softmax(-1) for row in logits]

    def throughput(
        self, domains: list[str], mixed: bool, image: bytes, seconds: float
    ) -> dict[str, float]:
        """Images per second for one batch of these domains on the mixed or the domain path:
        with decoding, and the model only."""
        x = torch.stack([self.decode(d, image) for d in domains])

        def full() -> None:
            self.forward(domains, torch.stack([self.decode(d, image) for d in domains]), mixed)

        def model_only() -> None:
            self.forward(domains, x, mixed)

        with_decode, model = time_calls([full, model_only], seconds)
        n = len(domains)
        return {
            "batch": n,
            "images_per_s": n / with_decode.median,
            "model_images_per_s": n / model.median,
            "cpu_ms_per_image": _cpu_seconds_per_call(full) / n * 1e3,
        }


def _cpu_seconds_per_call(fn: Callable[[], None], calls: int = 3) -> float:
    """CPU time (all threads of this process) per call: unlike wall time, it barely moves when
    other processes take the cores, so CPU ratios hold on a busy machine."""
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls
