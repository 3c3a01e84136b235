"""Concurrent traffic in-process: batches really form, each answer is its own image's, and the
metrics follow. Batch deadlines are 10 s, so every batch here closes by size, deterministically.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import DOMAINS, Reference, assert_matches, image_bytes, metric, serving

pytestmark = pytest.mark.anyio
SLOW_DEADLINE = {"max_batch_delay_ms": 10_000}


async def classify_all(
    client: httpx.AsyncClient, requests: list[tuple[str, bytes]]
) -> list[dict[str, Any]]:
    async def one(domain: str, data: bytes) -> dict[str, Any]:
        r = await client.post(
            "/classify",
            params={"domain": domain, "top_k": 3},
            content=data,
            headers={"content-type": "image/png"},
        )
        assert r.status_code == 200, r.text
        return r.json()

    return await asyncio.gather(*(one(d, data) for d, data in requests))


def spread(per_domain: int, domains: tuple[str, ...] = DOMAINS) -> list[tuple[str, bytes]]:
    """Interleaved requests, a distinct image each."""
    return [(d, image_bytes(100 * i + j)) for i in range(per_domain) for j, d in enumerate(domains)]


def batches(text: str, path: str) -> dict[str, float]:
    return {d: metric(text, "bap_batches_total", domain=d, path=path) for d in DOMAINS}


@pytest.mark.parametrize(
    ("policy", "batch_size", "per_domain", "domain_batches", "mixed_batches"),
    [
        # One batch per domain, each only its own images, each through its own filters.
        ("per-domain", 4, 4, {d: 1 for d in DOMAINS}, {d: 0 for d in DOMAINS}),
        # All twelve images in one pass, each domain applied per image.
        ("mixed", 12, 4, {d: 0 for d in DOMAINS}, {d: 1 for d in DOMAINS}),
        # Spread traffic: no domain fills a batch alone, so auto mixes.
        ("auto", 6, 2, {d: 0 for d in DOMAINS}, {d: 1 for d in DOMAINS}),
    ],
)
async def test_concurrent_mixed_domain_requests_each_get_their_own_answer(
    store: Path,
    policy: str,
    batch_size: int,
    per_domain: int,
    domain_batches: dict[str, int],
    mixed_batches: dict[str, int],
) -> None:
    requests = spread(per_domain)
    async with serving(
        store, batching=policy, max_batch_size=batch_size, **SLOW_DEADLINE
    ) as client:
        bodies = await classify_all(client, requests)
        text = (await client.get("/metrics")).text
    reference = Reference(store)
    for (domain, data), body in zip(requests, bodies, strict=True):
        assert body["domain"] == domain
        assert_matches(body, reference.scores(domain, data))
    assert batches(text, "domain") == domain_batches
    assert batches(text, "mixed") == mixed_batches
    for d in DOMAINS:  # every image ran in a batch holding all of its domain's images
        assert metric(text, "bap_batch_size_count", domain=d) == 1
        assert metric(text, "bap_batch_size_sum", domain=d) == per_domain


async def test_auto_keeps_a_busy_domain_on_its_own_filters(store: Path) -> None:
    requests = [("dom1", image_bytes(i)) for i in range(8)]
    async with serving(store, batching="auto", max_batch_size=4, **SLOW_DEADLINE) as client:
        bodies = await classify_all(client, requests)
        text = (await client.get("/metrics")).text
    reference = Reference(store)
    for (domain, data), body in zip(requests, bodies, strict=True):
        assert_matches(body, reference.scores(domain, data))
    assert metric(text, "bap_batches_total", domain="dom1", path="domain") == 2
    assert metric(text, "bap_batches_total", domain="dom1", path="mixed") == 0


async def test_a_batch_request_forms_one_batch(store: Path) -> None:
    files = [("file", (f"{i}.png", image_bytes(i))) for i in range(5)]
    async with serving(store, batching="per-domain", max_batch_size=5, **SLOW_DEADLINE) as client:
        r = await client.post("/classify/batch", params={"domain": "dom2"}, files=files)
        text = (await client.get("/metrics")).text
    assert r.status_code == 200
    assert metric(text, "bap_batch_size_count", domain="dom2") == 1
    assert metric(text, "bap_batch_size_sum", domain="dom2") == 5


async def test_metrics_move_as_requests_flow(store: Path) -> None:
    async with serving(store) as client:
        before = (await client.get("/metrics")).text
        await classify_all(client, spread(2))
        await client.post("/classify", params={"domain": "zzz"}, content=b"x")
        after = (await client.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    for d in DOMAINS:
        assert delta("bap_requests_total", domain=d, code="200") == 2
        assert delta("bap_request_duration_seconds_count", domain=d, code="200") == 2
        assert delta("bap_queue_wait_seconds_count", domain=d) == 2
        assert delta("bap_inference_duration_seconds_count", domain=d) >= 1
        assert delta("bap_batch_size_sum", domain=d) == 2
        assert metric(after, "bap_queue_depth", domain=d) == 0
    assert delta("bap_requests_total", domain="unknown", code="404") == 1
    assert delta("bap_inference_busy_seconds_total") > 0
    assert metric(after, "bap_inference_workers") == 1  # torch runs one batch at a time
    assert 'domain="zzz"' not in after  # client input never becomes a label
    assert metric(after, "bap_inflight_requests") == 0
    # What the model costs, read from the manifest of the served version.
    assert metric(after, "bap_domain_parameters", domain="dom1") == 1001
    assert metric(after, "bap_domain_macs", domain="dom2") == 5002
    for scope, value in [("pruned", 1234), ("single_domain", 2000), ("independent", 6000)]:
        assert metric(after, "bap_model_parameters", scope=scope) == value
    assert metric(after, "bap_model_macs", scope="single_domain") == 9000
    info = {"name": "tiny", "version": "v1", "budget": "0.5"}
    assert metric(after, "bap_model_info", **info, runtime="torch", precision="fp32") == 1
    assert metric(after, "bap_model_load_seconds") > 0
