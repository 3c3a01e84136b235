"""ResNet-50 at 224 px, the size where pruning pays: each domain's graph against the unpruned
network in ONNX Runtime, one four-domain server against four single-domain unpruned servers
(req/s at 32 clients spread over the domains, RSS and PSS of every process), and our server
against its own in-process ceiling.

Random weights and nested budget masks (workloads.masked_network): timing depends only on which
filters exist. The single-domain servers serve a full ResNet-50 each, as a user who fine-tuned
one network per domain would deploy it, through the same server and runtime as ours.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from model_store import (
    MultiDomainResNet,
    baseline_cost,
    domain_view,
    export_graphs,
    make_session,
    open_version,
    prune_to_union,
)
from model_store.runtimes.layout import MIXED_KEY, domain_key, view_domains

from .common import process_memory, time_calls
from .inprocess import InProcess
from .loadgen import Load, run_load
from .process import Server, serve
from .workloads import (
    Shape,
    domain_fraction,
    executed_macs,
    masked_network,
    png_bytes,
    publish,
    unpruned_network,
)

log = logging.getLogger(__name__)
RESNET50 = Shape(224, 1.0, "resnet50")


@dataclass(frozen=True)
class Settings:
    shape: Shape = RESNET50
    domains: int = 4
    budget: float = 0.5
    batches: tuple[int, ...] = (1, 16)
    timing_seconds: float = 4.0
    clients: int = 32
    rounds: int = 3  # load rounds, ours and the single-domain servers in turn (medians)
    load_seconds: float = 12.0  # a round
    warmup_s: float = 3.0
    max_requests: int = 100_000


def measure(s: Settings) -> dict[str, Any]:
    masked = masked_network(s.shape, s.domains, s.budget, seed=11)
    pruned = prune_to_union(masked).eval()
    names = list(pruned.domain_names)
    image = png_bytes(s.shape.input_size + s.shape.input_size // 7, seed=0)
    with tempfile.TemporaryDirectory(prefix="bap-r50-") as tmp:
        store, logs = Path(tmp) / "store", Path(tmp)
        publish(store, pruned, "all", s.budget, graphs=True)
        for i, name in enumerate(names):
            full = unpruned_network(s.shape, seed=100 + i)
            publish(store, full, f"full-{name}", 1.0, graphs=True)
        speed = _graph_speed(pruned, s)
        with ExitStack() as stack:
            ours = [(stack.enter_context(serve(store, "all", logs)), names)]
            # each single-domain model's one domain is named d0 (workloads.bench_spec)
            singles = [
                (stack.enter_context(serve(store, f"full-{n}", logs)), ["d0"]) for n in names
            ]
            # the server's own set-up without HTTP: 1-thread sessions, a batch per core at once
            ceiling = InProcess(store, "all", threads=1)
            cores = len(os.sched_getaffinity(0))

            def ceiling_round() -> dict[str, float]:
                one_domain = [names[0]] * 16
                return ceiling.concurrent_throughput(one_domain, image, s.timing_seconds, cores)

            # rounds in turn (ours, the single servers, the in-process ceiling), so a
            # neighbour's burst of load slows every side alike; the idle side's threads sleep
            # (ONNX Runtime without spinning)
            rounds = [
                (_load(ours, s, image), _load(singles, s, image), ceiling_round())
                for _ in range(s.rounds)
            ]
            ours_memory = process_memory(ours[0][0].pid)
            single_memory = [process_memory(server.pid) for server, _ in singles]
        served = _median_round([r[0] for r in rounds])
        single_load = _median_round([r[1] for r in rounds])
        ceiling_median = _median([r[2] for r in rounds], "images_per_s")
        views = view_domains(open_version(store, "all").manifest)
    singles_total = {k: sum(m[k] for m in single_memory) for k in ours_memory}
    return {
        "graph_speed": speed,
        "views_loaded": views,
        "domain_cost_fractions": [round(domain_fraction(masked, d), 4) for d in range(s.domains)],
        "ours": served,
        "singles": single_load,
        "ours_memory_mib": _mib(ours_memory),
        "singles_memory_mib": _mib(singles_total),
        "rss_ratio": ours_memory["rss"] / singles_total["rss"],
        "pss_ratio": ours_memory["pss"] / singles_total["pss"],
        "throughput_ratio": served["throughput"] / single_load["throughput"],
        "ceiling": ceiling_median,
        "server_over_ceiling": served["throughput"] / ceiling_median["images_per_s"],
    }


def _graph_speed(pruned: MultiDomainResNet, s: Settings) -> list[dict[str, Any]]:
    """Per domain and batch: its own view (only its filters) and the union graph against the
    unpruned network, one ONNX Runtime thread each (as the server runs a batch), interleaved;
    the speed-up divided by the MACs ratio says how much of the pruning the runtime turns into
    time."""
    graphs = export_graphs(pruned)
    unpruned = export_graphs(unpruned_network(s.shape, seed=7))[domain_key("d0")]
    sessions = {k: make_session(v, 1) for k, v in graphs.items()}
    full = make_session(unpruned, 1)
    baseline = baseline_cost(pruned.spec, "macs", 0)
    rows = []
    for d, name in enumerate(pruned.domain_names):
        view = domain_view(pruned, d)
        own_macs, union_macs = executed_macs(view), executed_macs(pruned)
        for batch in s.batches:
            x = np.random.default_rng(batch).standard_normal(
                (batch, 3, s.shape.input_size, s.shape.input_size), dtype=np.float32
            )
            index = np.full(batch, d, dtype=np.int64)
            feeds = [
                (sessions[domain_key(name)], {"x": x}),
                (sessions[MIXED_KEY], {"x": x, "domains": index}),
                (full, {"x": x}),
            ]
            own, union, unpruned_t = time_calls(
                [partial(session.run, None, feed) for session, feed in feeds], s.timing_seconds
            )
            rows.append(
                {
                    "domain": name,
                    "batch": batch,
                    "unpruned_ms": unpruned_t.median * 1e3,
                    "view_ms": own.median * 1e3,
                    "union_ms": union.median * 1e3,
                    "view_speedup": unpruned_t.median / own.median,
                    "union_speedup": unpruned_t.median / union.median,
                    "view_macs_ratio": baseline / own_macs,
                    "union_macs_ratio": baseline / union_macs,
                    "view_speedup_over_macs_ratio": unpruned_t.median
                    / own.median
                    / (baseline / own_macs),
                    "union_speedup_over_macs_ratio": unpruned_t.median
                    / union.median
                    / (baseline / union_macs),
                }
            )
            log.info("resnet50 %s", rows[-1])
    return rows


def _load(servers: list[tuple[Server, list[str]]], s: Settings, image: bytes) -> dict[str, Any]:
    """s.clients closed-loop clients, split evenly over the servers, each cycling through its
    domains; summed throughput, the worst p99 and every error."""
    results: list[dict[str, Any]] = [{} for _ in servers]

    def drive(i: int, server: Server, domains: list[str]) -> None:
        load = Load(
            tuple(domains), s.clients // len(servers), s.load_seconds, s.warmup_s, s.max_requests
        )
        results[i] = run_load(server.url, load, image)

    threads = [
        threading.Thread(target=drive, args=(i, server, domains))
        for i, (server, domains) in enumerate(servers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "throughput": sum(r["throughput"] for r in results),
        "p50_ms": max(r["p50_ms"] or 0 for r in results),
        "p99_ms": max(r["p99_ms"] or 0 for r in results),
        "ok": sum(r["ok"] for r in results),
        "errors": errors,
    }


def _median(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round of median `key`, with every round's `key`."""
    ordered = sorted(rounds, key=lambda r: r[key])
    return {**ordered[len(ordered) // 2], "rounds": [round(r[key], 2) for r in rounds]}


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The load round of median throughput, with every round's throughput and all errors."""
    errors: dict[str, int] = {}
    for r in rounds:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {**_median(rounds, "throughput"), "errors": errors}


def _mib(values: dict[str, int]) -> dict[str, float]:
    return {k: round(v / 2**20, 1) for k, v in values.items()}
