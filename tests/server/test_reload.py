"""Reload in-process: a good version swaps in under load without losing a request; a bad one is
refused and the old version keeps serving; a bad version at start-up stops the start."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from model_store import set_current
from server import create_app
from server.holder import CandidateRefused
from tests.server.conftest import (
    DOMAINS,
    MODEL,
    TOKEN,
    HeldBody,
    Reference,
    assert_matches,
    image_bytes,
    metric,
    publish_random,
    running,
    serving,
    settings_for,
)

pytestmark = pytest.mark.anyio
ADMIN = {"authorization": f"Bearer {TOKEN}"}


async def post(client: httpx.AsyncClient, domain: str, body: bytes | HeldBody) -> httpx.Response:
    return await client.post(
        "/classify", params={"domain": domain}, content=body, headers={"content-type": "image/png"}
    )


def corrupt_weights(store: Path, version: str) -> None:
    weights = store / MODEL / version / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))


async def test_reload_under_load_loses_no_request(store: Path) -> None:
    """Requests accepted by v1 finish on v1 after the swap; later ones run on v2; all succeed."""
    n = 2 * len(DOMAINS)
    old = [(DOMAINS[i % 3], HeldBody(image_bytes(i))) for i in range(n)]
    new = [(DOMAINS[i % 3], image_bytes(50 + i)) for i in range(n)]
    async with serving(store, max_batch_size=n, max_batch_delay_ms=10_000) as client:
        in_flight = [asyncio.ensure_future(post(client, d, body)) for d, body in old]
        await asyncio.gather(*(body.reading.wait() for _, body in old))
        publish_random(store, seed=1)
        swap = await client.post("/admin/reload", headers=ADMIN)
        after = [asyncio.ensure_future(post(client, d, data)) for d, data in new]
        for _, body in old:
            body.release.set()
        old_responses = await asyncio.gather(*in_flight)
        new_responses = await asyncio.gather(*after)
        ready = (await client.get("/readyz")).json()
        metrics = (await client.get("/metrics")).text
    assert swap.status_code == 200, swap.text
    assert swap.json() == {"status": "reloaded", "previous": "v1", "version": "v2"}
    assert ready["version"] == "v2"
    v1, v2 = Reference(store, "v1"), Reference(store, "v2")
    for (domain, body), r in zip(old, old_responses, strict=True):
        assert r.status_code == 200 and r.json()["model_version"] == "v1"
        assert_matches(r.json(), v1.scores(domain, body.data))
    for (domain, data), r in zip(new, new_responses, strict=True):
        assert r.status_code == 200 and r.json()["model_version"] == "v2"
        assert_matches(r.json(), v2.scores(domain, data))
    assert metric(metrics, "bap_model_info", name=MODEL, version="v2", budget="0.5") == 1
    assert metric(metrics, "bap_model_reloads_total", result="loaded") == 2


async def test_corrupt_new_version_is_refused_and_the_old_keeps_serving(store: Path) -> None:
    data = image_bytes(9)
    async with serving(store) as client:
        publish_random(store, seed=1)  # CURRENT -> v2
        corrupt_weights(store, "v2")
        refused = await client.post("/admin/reload", headers=ADMIN)
        ready = (await client.get("/readyz")).json()
        answer = await post(client, "dom1", data)
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 409
    assert refused.json()["error"] == "reload_refused"
    assert "SHA-256" in refused.json()["detail"] and "still serving v1" in refused.json()["detail"]
    assert ready["version"] == "v1"
    assert answer.status_code == 200 and answer.json()["model_version"] == "v1"
    assert_matches(answer.json(), Reference(store, "v1").scores("dom1", data))
    assert metric(metrics, "bap_model_reloads_total", result="refused") == 1
    assert metric(metrics, "bap_model_info", name=MODEL, version="v1", budget="0.5") == 1


DAMAGE = [
    "malformed manifest",
    "edited label",
    "edited version",
    "missing version",
    "garbage record",
]


@pytest.mark.parametrize("damage", DAMAGE)
async def test_other_damage_is_refused_too(store: Path, damage: str) -> None:
    """Whatever was changed after publishing, the manifest included (a renamed label, another
    version name), the new version is refused and the old one keeps serving."""
    async with serving(store) as client:
        publish_random(store, seed=1)
        manifest = store / MODEL / "v2" / "manifest.json"
        refs = store / MODEL / "REFS.json"
        if damage == "malformed manifest":
            manifest.write_text(json.dumps({"format_version": 1, "spec": {}}))
        elif damage == "edited label":
            manifest.write_text(manifest.read_text().replace('"c0"', '"cX"'))
        elif damage == "edited version":
            manifest.write_text(manifest.read_text().replace('"v2"', '"v1"'))
        elif damage == "missing version":
            refs.write_text(refs.read_text().replace('"current": "v2"', '"current": "v7"'))
        else:
            refs.write_text("../../etc\n")
        refused = await client.post("/admin/reload", headers=ADMIN)
        answer = await post(client, "dom0", image_bytes(1))
    assert refused.status_code == 409, refused.text
    assert answer.status_code == 200 and answer.json()["model_version"] == "v1"


async def test_reload_back_to_an_older_version(store: Path) -> None:
    async with serving(store) as client:
        publish_random(store, seed=1)
        assert (await client.post("/admin/reload", headers=ADMIN)).json()["version"] == "v2"
        set_current(store, MODEL, "v1")  # roll back
        rolled = await client.post("/admin/reload", headers=ADMIN)
    assert rolled.json() == {"status": "reloaded", "previous": "v2", "version": "v1"}


async def test_a_corrupt_version_at_start_up_stops_the_start(store: Path) -> None:
    corrupt_weights(store, "v1")
    with pytest.raises(CandidateRefused, match="SHA-256"):
        async with running(create_app(settings_for(store))):
            pass
