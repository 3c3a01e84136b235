"""Server level: a live `python -m server` on loopback under bounded load.

One server per configuration over one published model (β = 0.5, 4 domains): batching off (max
batch size 1); batching on under each policy (auto, per-domain, mixed); auto with one torch
thread and auto with no batch delay. Closed-loop sweeps of concurrent clients with traffic
spread evenly over the 4 domains or concentrated on one; an open-loop run at half the maximum
throughput for the p99/p50 target. Batch sizes come from the server's own
/metrics; the same batches are then timed in-process for the overhead ratio.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store import prune_to_union

from .common import cpu_seconds, torch_threads
from .inprocess import InProcess
from .loadgen import Load, batch_counts, run_load
from .process import Server, serve
from .workloads import HEADLINE, Shape, masked_network, png_bytes, publish

log = logging.getLogger(__name__)
MODEL = "bench"
DOMAINS = ("d0", "d1", "d2", "d3")
TRAFFIC = {"spread": DOMAINS, "one domain": DOMAINS[:1]}


@dataclass(frozen=True)
class Settings:
    clients: tuple[int, ...]  # the full sweep (batching off and auto)
    policy_clients: tuple[int, ...]  # per-domain vs mixed vs auto
    seconds: float
    warmup_s: float
    max_requests: int
    inprocess_seconds: float
    shape: Shape = HEADLINE
    budget: float = 0.5
    max_batch_size: int = 16
    max_batch_delay_ms: float = 5.0
    torch_threads: int | None = None  # None: torch's default (one per core)


ONE_THREAD = "auto, 1 torch thread"
NO_DELAY = "auto, no batch delay"
SWEEPS = ("batching off", "auto", ONE_THREAD, NO_DELAY)  # run every client count, spread


def servers(s: Settings) -> dict[str, dict[str, Any]]:
    """Server name -> its flags. The 1-thread variant shows what the client, the event loop
    and a second OpenMP thread fighting over 2 cores cost; the no-delay one, what waiting
    for a batch to fill costs when batches form anyway while the previous one runs."""
    common = {} if s.torch_threads is None else {"threads": s.torch_threads}
    batched = common | {
        "max_batch_size": s.max_batch_size,
        "max_batch_delay_ms": s.max_batch_delay_ms,
    }
    out = {
        "batching off": common | {"batching": "per-domain", "max_batch_size": 1},
        "auto": batched | {"batching": "auto"},
        ONE_THREAD: batched | {"batching": "auto", "threads": 1},
        NO_DELAY: batched | {"batching": "auto", "max_batch_delay_ms": 0},
        "per-domain": batched | {"batching": "per-domain"},
        "mixed": batched | {"batching": "mixed"},
    }
    if s.torch_threads == 1:  # auto already runs on one thread
        del out[ONE_THREAD]
    return out


def plan(name: str, s: Settings) -> list[tuple[str, int]]:
    """(traffic, clients) points each server runs."""
    if name in SWEEPS and name != "auto":
        return [("spread", c) for c in s.clients]
    spread = s.clients if name == "auto" else s.policy_clients
    return [("spread", c) for c in spread] + [("one domain", c) for c in s.policy_clients]


def measure(s: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bap-bench-") as tmp:
        store = Path(tmp) / "store"
        publish(
            store, prune_to_union(masked_network(s.shape, 4, s.budget, seed=11)), MODEL, s.budget
        )
        image = png_bytes(s.shape.input_size + s.shape.input_size // 8, seed=0)
        points: list[dict[str, Any]] = []
        for name, flags in servers(s).items():
            with serve(store, MODEL, Path(tmp), **flags) as server:
                run = _sweep(server, name, plan(name, s), s, image)
                if name == "auto":
                    run.append(_half_load(server, run, s, image))
                points += [p | {"torch_threads": flags.get("threads")} for p in run]
            log.info("server: %s done", name)
        _add_inprocess(points, InProcess(store, MODEL), image, s.inprocess_seconds)
    return {"points": points, "model": {"shape": s.shape.label, "budget": s.budget}}


def _load(s: Settings, traffic: str, clients: int, rate: float | None = None) -> Load:
    return Load(TRAFFIC[traffic], clients, s.seconds, s.warmup_s, s.max_requests, rate)


def _sweep(
    server: Server, name: str, points: list[tuple[str, int]], s: Settings, image: bytes
) -> list[dict[str, Any]]:
    return [_point(server, name, traffic, _load(s, traffic, c), image) for traffic, c in points]


def _point(server: Server, name: str, traffic: str, load: Load, image: bytes) -> dict[str, Any]:
    before, cpu = batch_counts(server.url), (cpu_seconds(server.pid), time.process_time())
    result = run_load(server.url, load, image)
    server_cpu, client_cpu = cpu_seconds(server.pid) - cpu[0], time.process_time() - cpu[1]
    after = batch_counts(server.url)
    delta = {k: after[k] - before[k] for k in after}
    # Where the 2 cores went: the whole run (warm-up included) over the requests it sent.
    sent = max(1, result["requests"] + result["warmup_requests"])
    cpu_ms = {
        "server_cpu_ms_per_request": server_cpu / sent * 1e3,
        "client_cpu_ms_per_request": client_cpu / sent * 1e3,
    }
    return (
        {"server": name, "traffic": traffic} | result | _batches(delta, len(load.domains)) | cpu_ms
    )


def _batches(delta: dict[str, float], domains: int) -> dict[str, Any]:
    """Mean batch size the server formed. Exact when every batch took the domain path; for
    mixed batches /metrics counts (domain, batch) pairs, so assume each held every domain."""
    batches = delta["domain_batches"] + delta["mixed_pairs"] / domains
    return {
        "mean_batch": delta["images"] / batches if batches else None,
        "mixed_share": delta["mixed_pairs"] / domains / batches if batches else None,
        "batch_exact": delta["mixed_pairs"] == 0,
    }


def _half_load(
    server: Server, points: list[dict[str, Any]], s: Settings, image: bytes
) -> dict[str, Any]:
    """Open loop at half the best closed-loop throughput this server reached, spread traffic."""
    best = max(p["throughput"] for p in points if p["traffic"] == "spread")
    load = _load(s, "spread", max(s.clients), rate=best / 2)
    return _point(server, "auto", "spread, half max rate", load, image)


def _add_inprocess(
    points: list[dict[str, Any]], model: InProcess, image: bytes, seconds: float
) -> None:
    """For each point, in-process throughput at the batch it formed (to the nearest power of
    two, which bounds how many sizes are timed) and HTTP / in-process."""
    cache: dict[tuple[int, int, bool, int | None], dict[str, float]] = {}
    for p in points:
        if not p["mean_batch"]:
            continue
        batch = 2 ** round(math.log2(max(1.0, p["mean_batch"])))  # fewer sizes to time
        mixed = bool(p["mixed_share"] and p["mixed_share"] > 0.5)
        key = (batch, p["domains"], mixed, p["torch_threads"])
        if key not in cache:
            names = [DOMAINS[i % p["domains"]] for i in range(batch)]
            with torch_threads(p["torch_threads"]):
                cache[key] = model.throughput(names, mixed, image, seconds)
        ref = cache[key]
        p["inprocess_batch"] = batch
        p["inprocess_images_per_s"] = ref["images_per_s"]
        p["inprocess_model_images_per_s"] = ref["model_images_per_s"]
        p["http_over_inprocess"] = p["throughput"] / ref["images_per_s"]
        p["http_over_model"] = p["throughput"] / ref["model_images_per_s"]
        p["inprocess_cpu_ms_per_image"] = ref["cpu_ms_per_image"]
        p["cpu_inprocess_over_server"] = ref["cpu_ms_per_image"] / p["server_cpu_ms_per_request"]
