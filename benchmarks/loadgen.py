"""A bounded async httpx load generator: closed loop (N clients) or open loop (fixed rate).

Every request is one multipart PNG to /classify. Requests in the first `warmup_s` are sent but
not counted. Each run stops at `seconds` or `max_requests`, whichever comes first, so a slow
machine makes the figures worse, never the run longer. Loopback only.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Load:
    """What to send: which domains in turn, how many at once (or at what rate), for how long."""

    domains: tuple[str, ...]
    clients: int
    seconds: float
    warmup_s: float
    max_requests: int
    rate: float | None = None  # open loop: requests per second (at most `clients` in flight)


@dataclass
class Outcome:
    started: float
    warmup_requests: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self, window_s: float) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else None

        return {
            "requests": len(lat) + sum(self.errors.values()),
            "warmup_requests": self.warmup_requests,
            "ok": len(lat),
            "errors": dict(self.errors),
            "throughput": len(lat) / window_s,
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(lat) * 1e3 if lat else None,
        }


async def _one(client: httpx.AsyncClient, domain: str, image: bytes, out: Outcome) -> None:
    start = time.perf_counter()
    try:
        response = await client.post(
            "/classify",
            params={"domain": domain, "top_k": 1},
            files={"file": ("image.png", image, "image/png")},
        )
        status = str(response.status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    if start < out.started:  # sent during warm-up
        out.warmup_requests += 1
        return
    if status == "200":
        out.latencies.append(time.perf_counter() - start)
    else:
        out.errors[status] += 1


async def _closed(client: httpx.AsyncClient, load: Load, image: bytes, out: Outcome) -> None:
    stop = out.started + load.seconds
    budget = itertools.count()
    order = itertools.cycle(load.domains)

    async def worker() -> None:
        while time.perf_counter() < stop and next(budget) < load.max_requests:
            await _one(client, next(order), image, out)

    await asyncio.gather(*(worker() for _ in range(load.clients)))


async def _open(client: httpx.AsyncClient, load: Load, image: bytes, out: Outcome) -> None:
    rate = load.rate or 1.0
    stop = out.started + load.seconds
    slots = asyncio.Semaphore(load.clients)
    tasks: set[asyncio.Task[None]] = set()

    async def send(domain: str) -> None:
        async with slots:
            await _one(client, domain, image, out)

    begin = time.perf_counter()
    for n, domain in zip(range(load.max_requests), itertools.cycle(load.domains), strict=False):
        due = begin + n / rate
        if due >= stop:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.create_task(send(domain))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def _drive(url: str, load: Load, image: bytes) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=load.clients, max_keepalive_connections=load.clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        out = Outcome(started=time.perf_counter() + load.warmup_s)
        run = _closed if load.rate is None else _open
        await run(client, load, image, out)
        window = max(1e-9, min(time.perf_counter(), out.started + load.seconds) - out.started)
        return out.summary(window)


def run_load(url: str, load: Load, image: bytes) -> dict[str, Any]:
    """Send `load` to the server at `url`; throughput (ok/s), latency percentiles, errors."""
    result = asyncio.run(_drive(url, load, image))
    return {"clients": load.clients, "rate": load.rate, "domains": len(set(load.domains))} | result


def batch_counts(url: str) -> dict[str, float]:
    """Server-side batching so far: images and batches by path, from /metrics.

    bap_batches counts (domain, batch) pairs, so a mixed batch of k domains counts k times;
    for domain-path batches the pair count is the batch count, and images / batches is exact.
    """
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {"images": 0.0, "domain_batches": 0.0, "mixed_pairs": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bap_batch_size_sum":
                out["images"] += sample.value
            elif sample.name == "bap_batches_total":
                key = "domain_batches" if sample.labels["path"] == "domain" else "mixed_pairs"
                out[key] += sample.value
    return out
