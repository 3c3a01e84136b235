"""Every endpoint in-process (the app's own lifespan runs): shapes, content types, image modes."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image

from server import create_app, routes, runner
from server.startup import load_model
from tests.server.conftest import (
    DOMAINS,
    Reference,
    assert_matches,
    image_bytes,
    running,
    serving,
    settings_for,
)

pytestmark = pytest.mark.anyio


def encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


MODES = {
    "grey": encoded(Image.fromarray(pixels(1, (30, 20)), "L"), "PNG"),
    "rgba": encoded(Image.fromarray(pixels(2, (17, 25, 4)), "RGBA"), "PNG"),
    "palette": encoded(Image.fromarray(pixels(3, (20, 20, 3)), "RGB").convert("P"), "PNG"),
    "16-bit": encoded(Image.fromarray(pixels(4, (24, 24))).convert("I").convert("I;16"), "PNG"),
    "cmyk": encoded(Image.fromarray(pixels(5, (20, 30, 4)), "CMYK"), "JPEG"),
}


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("GIF", "image/gif"),
        ("TIFF", "image/tiff"),
        ("JPEG", "image/jpg"),  # not registered, but what many clients send
        ("PNG", "application/octet-stream"),
    ],
)
async def test_classify_raw_body_gives_the_models_answer(
    store: Path, fmt: str, content_type: str
) -> None:
    data = image_bytes(7, fmt=fmt)
    async with serving(store) as client:
        r = await client.post(
            "/classify",
            params={"domain": "dom2"},
            content=data,
            headers={"content-type": content_type},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["domain"] == "dom2" and body["model_version"] == "v1"
    assert len(body["predictions"]) == 5  # default top_k, dom2 has 5 labels
    assert body["predictions"][0]["label"] == f"c{body['predictions'][0]['index']}"
    assert_matches(body, Reference(store).scores("dom2", data))


async def test_classify_multipart_file_and_top_k(store: Path) -> None:
    data = image_bytes(8)
    async with serving(store) as client:
        r = await client.post(
            "/classify",
            params={"domain": "dom0", "top_k": 2},
            files={"file": ("x.png", data, "image/png")},
        )
        over = await client.post(
            "/classify", params={"domain": "dom0", "top_k": 50}, files={"file": ("x.png", data)}
        )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2
    assert_matches(r.json(), Reference(store).scores("dom0", data))
    assert len(over.json()["predictions"]) == 3  # clamped to the domain's 3 labels


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_any_image_mode_is_converted_by_the_eval_transform(store: Path, mode: str) -> None:
    data = MODES[mode]
    async with serving(store) as client:
        r = await client.post(
            "/classify",
            params={"domain": "dom1"},
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
    assert r.status_code == 200, r.text
    assert_matches(r.json(), Reference(store).scores("dom1", data))


async def test_batch_returns_one_result_per_part_in_order(store: Path) -> None:
    images = [image_bytes(seed) for seed in range(5)]
    files = [("file", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    async with serving(store) as client:
        r = await client.post("/classify/batch", params={"domain": "dom1", "top_k": 4}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["domain"] == "dom1" and body["model_version"] == "v1"
    assert [item["filename"] for item in body["results"]] == [f"img{i}.png" for i in range(5)]
    reference = Reference(store)
    for item, data in zip(body["results"], images, strict=True):
        assert_matches(item, reference.scores("dom1", data))


async def test_domains_lists_labels_costs_budget_and_totals(store: Path) -> None:
    async with serving(store) as client:
        body = (await client.get("/domains")).json()
    assert body["model"] == "tiny" and body["version"] == "v1"
    assert body["budget"] == 0.5 and body["budget_unit"] == "macs"
    assert body["totals"]["independent_parameters"] == 6000
    assert [d["name"] for d in body["domains"]] == list(DOMAINS)
    first = body["domains"][0]
    assert first == {
        "name": "dom0",
        "labels": ["c0", "c1", "c2"],
        "accuracy": 0.9,
        "accuracy_int8": None,  # no int8 graphs in this version
        "accuracy_bf16": None,  # nor a bf16 measurement
        "parameters": 1000,
        "macs": 5000,
        "cost_fraction": 0.4,
    }


async def test_health_ready_docs_and_metrics(store: Path) -> None:
    async with serving(store) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        docs = await client.get("/docs")
        schema = (await client.get("/openapi.json")).json()
        metrics = await client.get("/metrics")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model": "tiny",
        "version": "v1",
        "runtime": "torch",
        "precision": "fp32",
    }
    assert docs.status_code == 200
    assert {"/classify", "/classify/batch", "/domains", "/readyz"} <= set(schema["paths"])
    form = schema["paths"]["/classify/batch"]["post"]["requestBody"]["content"]
    parts = form["multipart/form-data"]["schema"]["properties"]["file"]
    assert parts["type"] == "array" and parts["minItems"] == 1  # at least one `file` part
    assert metrics.status_code == 200 and "bap_model_info" in metrics.text


async def test_not_ready_before_the_model_is_loaded(store: Path) -> None:
    app = create_app(settings_for(store))  # lifespan not run: nothing loaded
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        classify = await client.post(
            "/classify",
            params={"domain": "dom0"},
            content=b"x",
            headers={"content-type": "image/png"},
        )
    assert health.status_code == 200
    for r in (ready, classify):
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"] == "not_ready"


async def test_docs_pages_load_every_asset_from_the_server_itself(store: Path) -> None:
    """An edge box is offline: /docs and /redoc reference no other host, and each script,
    style sheet and icon they name is served by the app."""
    async with serving(store) as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            assert "http://" not in html and "https://" not in html, page
            links = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)""", html)
            assert links and all(u.startswith("/") and not u.startswith("//") for u in links)
            assets = [u for u in links if u != "/openapi.json"]
            assert any(a.endswith(".js") for a in assets), page
            for asset in assets:
                answer = await client.get(asset)
                assert answer.status_code == 200 and answer.content, asset


async def test_start_up_loads_the_model_once(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bap-serve` loads, verifies and warms the version before uvicorn starts (so a bad one
    is one line, not a traceback) and the app serves that same object: one read of the weights."""
    loads = []
    real = runner.load_runtime
    monkeypatch.setattr(runner, "load_runtime", lambda *a: loads.append(a) or real(*a))
    settings = settings_for(store)
    served = load_model(settings)
    async with running(create_app(settings, preloaded=served)) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == "v1"
    assert len(loads) == 1


async def test_decoding_is_bounded_by_decode_concurrency(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three requests at once with decode_concurrency 1: one decodes, two wait for the slot."""
    entered, release, lock = threading.Semaphore(0), threading.Event(), threading.Lock()
    active, peak = [0], [0]
    real = routes.decode

    def held_decode(*args: Any) -> Any:
        if args[-1] <= routes.INLINE_DECODE_PIXELS:  # the inline try: refuses these images
            return real(*args)
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        entered.release()
        release.wait()
        with lock:
            active[0] -= 1
        return real(*args)

    monkeypatch.setattr(routes, "decode", held_decode)
    app = create_app(settings_for(store, decode_concurrency=1))
    async with running(app) as client:
        posts = [
            asyncio.create_task(
                client.post(
                    "/classify?domain=dom0",
                    content=image_bytes(seed, size=(200, 150)),
                    headers={"content-type": "image/png"},
                )
            )
            for seed in range(3)
        ]
        await anyio.to_thread.run_sync(entered.acquire)  # the first decode is running
        while app.state.decode_slots.statistics().tasks_waiting < 2:
            await asyncio.sleep(0.01)  # the other two queue for the slot (no deadline)
        assert active[0] == 1
        release.set()
        answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert peak[0] == 1


async def test_a_small_image_decodes_on_the_loop_and_a_large_one_in_a_thread(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[tuple[int, bool]] = []
    real = routes.decode

    def recording_decode(*args: Any) -> Any:
        out = real(*args)  # raises for an image over the inline size: not recorded
        threads.append((args[-1], threading.current_thread() is threading.main_thread()))
        return out

    monkeypatch.setattr(routes, "decode", recording_decode)
    async with serving(store) as client:
        for size in [(22, 19), (200, 150)]:
            r = await client.post(
                "/classify?domain=dom0",
                content=image_bytes(0, size=size),
                headers={"content-type": "image/png"},
            )
            assert r.status_code == 200, r.text
    limit = settings_for(store).max_pixels
    assert threads == [(routes.INLINE_DECODE_PIXELS, True), (limit, False)]


async def test_the_docs_offer_the_served_domains_and_say_where_metrics_are(store: Path) -> None:
    """/docs (its /openapi.json) names the served domains as every `domain` parameter's
    choices (/classify, /classify/batch, the v2 routes) and says where the metrics are."""
    async with serving(store) as client:
        schema = (await client.get("/openapi.json")).json()
        assert "/metrics" in schema["info"]["description"]
        choices = [
            p["schema"]["enum"]
            for path in schema["paths"].values()
            for op in path.values()
            for p in op.get("parameters", [])
            if p["name"] == "domain"
        ]
        assert choices and all(c == list(DOMAINS) for c in choices)
