"""The server's work without HTTP: decode, stack, run on the same path and runtime, softmax.

It calls the server's own hooks (`server.runner`: setup, decode, predict) on the store and
version the server loaded, so HTTP throughput divided by this is the server's overhead ratio
at the batch size it formed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from server.batching import Batch
from server.runner import decode, predict, setup

from .common import time_calls


class InProcess:
    def __init__(
        self,
        store: Path,
        name: str,
        runtime: str = "auto",
        threads: int | None = None,
        precision: str = "fp32",
    ):
        self.served = setup(store, name, runtime, threads, precision)

    def decode(self, domain: str, image: bytes) -> np.ndarray:
        return decode(self.served, domain, image, 10**8)

    def forward(self, domains: list[str], x: list[np.ndarray], mixed: bool) -> list[np.ndarray]:
        """Mixed: image i through domains[i]; else every image through domains[0] (the server's
        one-domain batch of that size)."""
        path, names = ("mixed", domains) if mixed else ("domain", [domains[0]] * len(domains))
        return predict(Batch(self.served, path, names, x, [0.0] * len(names)))

    def throughput(
        self, domains: list[str], mixed: bool, image: bytes, seconds: float
    ) -> dict[str, float]:
        """Images per second for one batch of these domains on the mixed or the domain path:
        with decoding, and the model only."""
        x = [self.decode(d, image) for d in domains]

        def full() -> None:
            self.forward(domains, [self.decode(d, image) for d in domains], mixed)

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

    def concurrent_throughput(
        self, domains: list[str], image: bytes, seconds: float, workers: int
    ) -> dict[str, float]:
        """Images per second with `workers` threads each decoding and running one-domain batches
        of these domains back to back, as the server runs one batch per worker at once."""
        n, counts = len(domains), [0] * workers
        deadline = time.monotonic() + seconds

        def loop(worker: int) -> None:
            while time.monotonic() < deadline:
                self.forward(domains, [self.decode(d, image) for d in domains], False)
                counts[worker] += n

        started = time.monotonic()
        threads = [threading.Thread(target=loop, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {
            "batch": n,
            "workers": workers,
            "images_per_s": sum(counts) / (time.monotonic() - started),
        }


def _cpu_seconds_per_call(fn: Callable[[], None], calls: int = 3) -> float:
    """CPU time (all threads of this process) per call: unlike wall time, it barely moves when
    other processes take the cores, so CPU ratios hold on a busy machine."""
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls
