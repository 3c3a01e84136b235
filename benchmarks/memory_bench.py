"""Memory: one server holding every domain vs N single-domain servers, after the same load.

The single-domain versions are each domain's own filters (`domain_view`), published as models of
their own: what a system that serves one model per domain would hold. All N run at once, so PSS
splits the shared torch pages among them as a real box would; RSS sums count them N times.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store import domain_view, prune_to_union, version_path

from .common import process_memory
from .loadgen import Load, run_load
from .process import Server, serve
from .workloads import HEADLINE, Shape, masked_network, png_bytes, publish

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    requests_per_domain: int
    shape: Shape = HEADLINE
    budget: float = 0.5
    domains: int = 4


def measure(s: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bap-bench-") as tmp:
        store, logs = Path(tmp) / "store", Path(tmp)
        model = prune_to_union(masked_network(s.shape, s.domains, s.budget, seed=11))
        publish(store, model, "all", s.budget)
        singles = {}
        for i, domain in enumerate(model.domain_names):
            publish(store, domain_view(model, i), f"only-{domain}", s.budget)
            singles[domain] = f"only-{domain}"
        image = png_bytes(s.shape.input_size + s.shape.input_size // 8, seed=0)

        with serve(store, "all", logs) as server:
            for domain in model.domain_names:
                _exercise(server, domain, image, s.requests_per_domain)
            one = process_memory(server.pid)
        with ExitStack() as stack:
            running = {d: stack.enter_context(serve(store, m, logs)) for d, m in singles.items()}
            for domain, server in running.items():
                _exercise(server, domain, image, s.requests_per_domain)
            each = {d: process_memory(server.pid) for d, server in running.items()}
        weights = {
            m: (version_path(store, m) / "weights.safetensors").stat().st_size
            for m in ["all", *singles.values()]
        }
    total = {k: sum(m[k] for m in each.values()) for k in one}
    return {
        "domains": s.domains,
        "one_server": _mib(one),
        "single_servers": {d: _mib(m) for d, m in each.items()},
        "single_servers_total": _mib(total),
        "weights_mib": _mib(weights),
        "one_over_sum": {k: one[k] / total[k] for k in one},
        "one_over_two": {k: one[k] / (2 * total[k] / s.domains) for k in one},
    }


def _exercise(server: Server, domain: str, image: bytes, n: int) -> None:
    """Batches of every size up to 16 have run, so the allocator has reached its working set."""
    result = run_load(server.url, Load((domain,), 16, 60.0, 0.0, n), image)
    if result["errors"]:
        raise RuntimeError(f"server answered errors while warming up: {result['errors']}")


def _mib(values: dict[str, int]) -> dict[str, float]:
    return {k: round(v / 2**20, 1) for k, v in values.items()}
