"""ResNet-50 at 224 px, 4 domains: our one pruned server against the servers a user would run
with four fine-tuned, unpruned networks (one graph each), same client, same machine.

Random weights and nested budget masks (workloads.masked_network), as in resnet50_bench: timing
and memory depend only on which filters exist. Each peer serves the four unpruned graphs as
four models (benchmarks/peer_apps, one ONNX Runtime thread a session, one Triton instance a
model); ours serves the pruned four-domain version. Each server must answer every domain like
its graph does in-process before it is timed; then `wrk -t1` per domain, the clients split
evenly, all four at once; req/s summed, worst p99, RSS/PSS of the whole process tree.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from model_store import (
    domain_key,
    export_graphs,
    make_session,
    preprocess_bytes,
    prune_to_union,
)

from .common import ROOT
from .inprocess import InProcess
from .peer_envs import DEFAULT_CACHE, PeerUnavailable
from .peers_bench import (
    APPS,
    OURS,
    PEERS,
    PLAIN,
    Launch,
    Request,
    ServerFailed,
    Top5,
    check_answer,
    predictions,
    prepare,
    started,
    tree_cpu,
    tree_memory,
)
from .workloads import Shape, bench_spec, masked_network, png_bytes, publish, unpruned_network
from .wrk import run_wrk

log = logging.getLogger(__name__)
TRITON = "Triton (PyTriton)"
LOAD_CAP_S = 120.0  # for every model of a server to answer after its first did
# ResNet-50 at 224 px queues for seconds at 8 clients a domain on 2 cores: wrk's default 2 s
# timeout would count those requests as errors instead of latencies
WRK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Settings:
    shape: Shape = Shape(224, 1.0, "resnet50")
    domains: int = 4
    budget: float = 0.5
    peers: tuple[str, ...] = (PLAIN, TRITON)
    clients: int = 32
    seconds: float = 20.0
    warmup_s: float = 5.0
    install: bool = True
    cache: Path = DEFAULT_CACHE


def measure(s: Settings) -> dict[str, Any]:
    pruned = prune_to_union(masked_network(s.shape, s.domains, s.budget, seed=11)).eval()
    names = list(pruned.domain_names)
    spec = bench_spec(s.shape, s.domains)
    pre, labels = spec.domains[0].preprocess, list(spec.domains[0].labels)
    image = png_bytes(s.shape.input_size + s.shape.input_size // 7, seed=0)
    with tempfile.TemporaryDirectory(prefix="bap-peers-r50-") as tmp:
        store, graphs = Path(tmp) / "store", {}
        publish(store, pruned, "all", s.budget, graphs=True)
        for i, name in enumerate(names):
            graph = export_graphs(unpruned_network(s.shape, seed=100 + i))[domain_key("d0")]
            graphs[name] = Path(tmp) / f"{name}.onnx"
            graphs[name].write_bytes(graph)
        expected = {n: _graph_top5(p, pre, labels, image) for n, p in graphs.items()}
        ours_expected = _our_top5(store, names, labels, image)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BAP_", "BENCH_"))}
        base |= {
            "BENCH_GRAPHS": json.dumps({n: str(p) for n, p in graphs.items()}),
            "BENCH_PREPROCESS": json.dumps(asdict(pre)),
            "BENCH_LABELS": json.dumps(labels),
            "BENCH_INSTANCES": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
        }
        ours = Launch(
            OURS,
            lambda ports: [sys.executable, "-m", "server", f"--store={store}", "--model=all",
                           f"--port={ports[0]}", "--log-level=warning"],
            base, Request(f"/classify?domain={names[0]}", image, "image/png"), predictions, 1,
        )  # fmt: skip
        servers = {OURS: (ours, _ours_requests(names, image), ours_expected)}
        skipped: dict[str, str] = {}
        versions: dict[str, Any] = {}
        for peer in s.peers:
            try:
                launch, versions[peer] = prepare(peer, s.install, s.cache, base, image, names[0])
            except PeerUnavailable as exc:
                skipped[peer] = str(exc)
                continue
            requests = {n: PEERS[peer].request(image, n) for n in names}
            servers[peer] = (launch, requests, expected)
        results = {}
        for name, (launch, requests, want) in servers.items():
            try:
                results[name] = _serve_and_load(launch, requests, want, labels, s, Path(tmp))
            except ServerFailed as exc:
                if name == OURS:
                    raise
                skipped[name] = str(exc)
    ours_result = results[OURS]
    return {
        "image_bytes": len(image),
        "domains": names,
        "servers": results,
        "peer_versions": versions,
        "skipped": skipped,
        "ratios": {
            n: {
                "req_per_s": ours_result["req_per_s"] / r["req_per_s"],
                # CPU time per request, theirs over ours: what the busy box's share of cores
                # per server does not decide
                "cpu_efficiency": r["cpu_ms_per_request"] / ours_result["cpu_ms_per_request"],
                "rss": ours_result["memory"]["rss"] / r["memory"]["rss"],
                "pss": ours_result["memory"]["pss"] / r["memory"]["pss"],
            }
            for n, r in results.items()
            if n != OURS
        },
    }


def _ours_requests(names: list[str], image: bytes) -> dict[str, Request]:
    return {n: Request(f"/classify?domain={n}", image, "image/png") for n in names}


def _graph_top5(path: Path, pre: Any, labels: list[str], image: bytes) -> Top5:
    """What a peer serving this graph must answer: the same graph in-process."""
    logits = make_session(str(path), 1).run(None, {"x": preprocess_bytes(image, pre, 10**8)[None]})
    return _top5(logits[0][0], labels)


def _our_top5(store: Path, names: list[str], labels: list[str], image: bytes) -> dict[str, Top5]:
    """What our server must answer: its own hooks in-process, per domain."""
    served = InProcess(store, "all", threads=1)
    return {
        n: _top5(served.forward([n], [served.decode(n, image)], False)[0], labels, probs=True)
        for n in names
    }


def _top5(values: np.ndarray, labels: list[str], probs: bool = False) -> Top5:
    v = np.asarray(values, dtype=np.float64)
    if not probs:
        z = np.exp(v - v.max())
        v = z / z.sum()
    best = np.argsort(-v, kind="stable")[:5]
    return [(labels[i], float(v[i])) for i in best]


def _answer(url: str, req: Request) -> Any:
    """The server's JSON answer to `req`; a 404 is retried while the server loads its models
    (Triton makes one model after another available after the first answers)."""
    headers = {"content-type": req.content_type} | req.headers
    deadline = time.monotonic() + LOAD_CAP_S
    while True:
        reply = httpx.post(url + req.path, content=req.body, headers=headers, timeout=60)
        if reply.status_code == 200:
            return reply.json()
        if reply.status_code != 404 or time.monotonic() > deadline:
            raise ServerFailed(f"{req.path}: {reply.status_code} {reply.text[:200]}")
        time.sleep(0.5)


def _serve_and_load(
    launch: Launch,
    requests: dict[str, Request],
    want: dict[str, Top5],
    labels: list[str],
    s: Settings,
    logs: Path,
) -> dict[str, Any]:
    """Start the server, check every domain's answer, then one wrk per domain at once."""
    with started(launch, logs) as (pid, url, cold_s, _):
        for name, req in requests.items():
            reply = _answer(url, req)
            check_answer(f"{launch.name} {name}", launch.answer(reply, labels), want[name])
        rows: dict[str, dict[str, Any]] = {}
        each = max(1, s.clients // len(requests))
        warm = threading.Barrier(len(requests) + 1)  # every domain warm before the CPU reading

        def drive(name: str, req: Request) -> None:
            args = (url + req.path, req.body, req.content_type, each)
            try:
                if s.warmup_s:
                    run_wrk(*args, s.warmup_s, req.headers, timeout_s=WRK_TIMEOUT_S)
            finally:
                warm.wait()
            rows[name] = run_wrk(*args, s.seconds, req.headers, timeout_s=WRK_TIMEOUT_S)

        threads = [threading.Thread(target=drive, args=item) for item in requests.items()]
        for t in threads:
            t.start()
        warm.wait()
        cpu = tree_cpu(pid)
        for t in threads:
            t.join()
        cpu = tree_cpu(pid) - cpu
        memory = tree_memory(pid)
    rate = sum(r["req_per_s"] for r in rows.values())
    result = {
        "req_per_s": rate,
        "cpu_ms_per_request": cpu * 1e3 / max(1.0, rate * max(1, round(s.seconds))),
        "p50_ms": max(r["p50_ms"] for r in rows.values()),
        "p99_ms": max(r["p99_ms"] for r in rows.values()),
        "errors": sum(r["non_2xx"] + r["socket_errors"] for r in rows.values()),
        "memory": memory,
        "cold_start_s": cold_s,
        "per_domain": rows,
    }
    log.info("peers resnet50 %s %s", launch.name, result)
    return result
