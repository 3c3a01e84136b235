"""A catalogue of hostile and mistaken requests, each naming the status it must get.

Every error is JSON `{"error": CODE, "detail": ...}`; none of them is a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server import create_app
from tests.conftest import png_header
from tests.server.conftest import TOKEN, image_bytes, metric, running, serving, settings_for

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}


GOOD = image_bytes(3)


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    """A body streamed in chunks with no Content-Length (chunked transfer)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


# name: (method, url, request kwargs, settings overrides, status, error code)
CATALOGUE: dict[str, tuple[str, str, dict[str, Any], dict[str, Any], int, str]] = {
    "unknown domain": (
        "POST", "/classify?domain=nope", {"content": GOOD, "headers": PNG}, {}, 404,
        "unknown_domain",
    ),
    "missing domain": (
        "POST", "/classify", {"content": GOOD, "headers": PNG}, {}, 422, "invalid_parameters",
    ),
    "top_k zero": (
        "POST", "/classify?domain=dom0&top_k=0", {"content": GOOD, "headers": PNG}, {}, 422,
        "invalid_parameters",
    ),
    "top_k not a number": (
        "POST", "/classify?domain=dom0&top_k=many", {"content": GOOD, "headers": PNG}, {}, 422,
        "invalid_parameters",
    ),
    "domain name far too long": (
        "POST", "/classify?domain=" + "a" * 500, {"content": GOOD, "headers": PNG}, {}, 422,
        "invalid_parameters",
    ),
    "empty body": ("POST", "/classify?domain=dom0", {"headers": PNG}, {}, 400, "bad_image"),
    "not an image": (
        "POST", "/classify?domain=dom0", {"content": b"hello " * 50, "headers": PNG}, {}, 400,
        "bad_image",
    ),
    "truncated png": (
        "POST", "/classify?domain=dom0", {"content": GOOD[: len(GOOD) // 2], "headers": PNG},
        {}, 400, "bad_image",
    ),
    "declared body over the limit": (
        "POST", "/classify?domain=dom0", {"content": b"\0" * 5000, "headers": PNG},
        {"max_body_bytes": 4096}, 413, "too_large",
    ),
    "streamed body over the limit": (
        "POST", "/classify?domain=dom0", {"content": chunks, "headers": PNG},
        {"max_body_bytes": 4096}, 413, "too_large",
    ),
    "pixel count over the limit": (
        "POST", "/classify?domain=dom0",
        {"content": image_bytes(1, size=(200, 200)), "headers": PNG},
        {"max_pixels": 10_000}, 413, "image_too_large",
    ),
    "a bomb Pillow's own guard stops": (
        "POST", "/classify?domain=dom0", {"content": png_header(20_000, 20_000), "headers": PNG},
        {"max_pixels": 10**9}, 413, "image_too_large",
    ),

    "text content type": (
        "POST", "/classify?domain=dom0",
        {"content": GOOD, "headers": {"content-type": "text/plain"}}, {}, 415,
        "unsupported_media_type",
    ),
    "no content type": (
        "POST", "/classify?domain=dom0", {"content": GOOD, "headers": {"content-type": ""}}, {},
        415, "unsupported_media_type",
    ),
    "raw body on the batch route": (
        "POST", "/classify/batch?domain=dom0", {"content": GOOD, "headers": PNG}, {}, 415,
        "unsupported_media_type",
    ),
    "multipart without a file part": (
        "POST", "/classify?domain=dom0", {"data": {"other": "x"}, "files": {"x": ("a", b"b")}},
        {}, 422, "invalid_parameters",
    ),
    "file sent as a plain field": (
        "POST", "/classify?domain=dom0", {"data": {"file": "not a file"}, "files": {"x": b"b"}},
        {}, 422, "invalid_parameters",
    ),
    "two files on the single route": (
        "POST", "/classify?domain=dom0",
        {"files": [("file", ("a.png", GOOD)), ("file", ("b.png", GOOD))]}, {}, 422,
        "invalid_parameters",
    ),
    "multipart without a boundary": (
        "POST", "/classify?domain=dom0",
        {"content": GOOD, "headers": {"content-type": "multipart/form-data"}}, {}, 400,
        "bad_request",
    ),
    "one bad part in a batch": (
        "POST", "/classify/batch?domain=dom0",
        {"files": [("file", ("ok.png", GOOD)), ("file", ("bad.png", b"junk"))]}, {}, 400,
        "bad_image",
    ),
    "unknown route": ("GET", "/nothing-here", {}, {}, 404, "not_found"),
    "wrong method": ("GET", "/classify?domain=dom0", {}, {}, 405, "method_not_allowed"),
    "reload without a configured token": (
        "POST", "/admin/reload", {"headers": {"authorization": f"Bearer {TOKEN}"}},
        {"admin_token": None}, 403, "forbidden",
    ),
    "reload without a token": ("POST", "/admin/reload", {}, {}, 401, "unauthorized"),
    "reload with a wrong token": (
        "POST", "/admin/reload", {"headers": {"authorization": "Bearer " + "x" * 30}}, {}, 403,
        "forbidden",
    ),
    "reload with a basic auth header": (
        "POST", "/admin/reload", {"headers": {"authorization": f"Basic {TOKEN}"}}, {}, 401,
        "unauthorized",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CATALOGUE))
async def test_hostile_request_gets_its_status_and_a_json_error(store: Path, case: str) -> None:
    method, url, kwargs, overrides, status, code = CATALOGUE[case]
    if callable(kwargs.get("content")):
        kwargs = kwargs | {"content": kwargs["content"](b"\0" * 20_000)}
    async with serving(store, **overrides) as client:
        r = await client.request(method, url, **kwargs)
        metrics = (await client.get("/metrics")).text
    assert r.status_code == status, r.text
    assert r.json().keys() == {"error", "detail"}
    assert r.json()["error"] == code
    if url.startswith("/classify"):  # counted, and never under a client-made label
        domain = "dom0" if "domain=dom0" in url else "unknown"
        assert metric(metrics, "bap_requests_total", domain=domain, code=str(status)) == 1


async def test_unknown_domain_lists_the_known_ones(store: Path) -> None:
    async with serving(store) as client:
        r = await client.post("/classify", params={"domain": "nope"}, content=GOOD, headers=PNG)
    assert "dom0, dom1, dom2" in r.json()["detail"]


async def test_bad_part_in_a_batch_is_named_and_nothing_runs(store: Path) -> None:
    """The first bad part stops the request: no part before or after it reaches a batch."""
    files = [
        ("file", ("ok.png", GOOD)),
        ("file", ("bad.png", b"junk")),
        ("file", ("ok2.png", GOOD)),
    ]
    async with serving(store) as client:
        r = await client.post("/classify/batch", params={"domain": "dom0"}, files=files)
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 400 and "file part 1 (bad.png)" in r.json()["detail"]
    assert "ok2" not in r.json()["detail"]
    assert metric(metrics, "bap_batch_size_count", domain="dom0") == 0  # no batch ran


async def test_full_queue_answers_503_with_retry_after(store: Path) -> None:
    async with serving(
        store, batching="mixed", max_batch_size=2, max_queue=1, max_batch_delay_ms=10_000
    ) as client:
        first = asyncio.ensure_future(
            client.post("/classify", params={"domain": "dom0"}, content=GOOD, headers=PNG)
        )
        while metric((await client.get("/metrics")).text, "bap_queue_depth", domain="dom0") < 1:
            await asyncio.sleep(0.01)  # wait until the first image is queued
        refused = await client.post(
            "/classify", params={"domain": "dom0"}, content=GOOD, headers=PNG
        )
        other = await client.post("/classify", params={"domain": "dom1"}, content=GOOD, headers=PNG)
        assert (await first).status_code == 200  # dom1 filled the mixed batch, so both ran
    assert other.status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "queue_full"


async def test_refused_admin_calls_change_nothing(store: Path) -> None:
    async with serving(store) as client:
        await client.post("/admin/reload", headers={"authorization": "Bearer wrong"})
        metrics = (await client.get("/metrics")).text
    assert metric(metrics, "bap_model_reloads_total", result="loaded") == 1  # start-up only


def test_httpx_streams_the_chunked_body_without_a_length() -> None:
    """Guard for the 'streamed' case above: it must really send no Content-Length."""
    request = httpx.Request("POST", "http://test/", content=chunks(b"\0" * 10))
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"


async def test_a_client_that_disconnects_mid_body_is_not_a_server_error(store: Path) -> None:
    app = create_app(settings_for(store))
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/classify",
        "raw_path": b"/classify",
        "query_string": b"domain=dom0",
        "headers": [(b"content-type", b"image/png"), (b"host", b"test")],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with running(app) as client:
        await app(scope, receive, send)
        metrics = (await client.get("/metrics")).text
    assert sent[0]["status"] == 499
    assert metric(metrics, "bap_requests_total", domain="dom0", code="499") == 1
