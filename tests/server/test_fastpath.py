"""The raw-body fast path: which requests it takes, and that it answers exactly as the route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from server import fastpath, routes
from tests.server.conftest import image_bytes, metric, serving

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"domain=dom0", ("dom0", 5)),
        (b"domain=dom0&top_k=3", ("dom0", 3)),
        (b"top_k=1000&domain=d%C3%A9j%C3%A0", ("déjà", 1000)),
        (b"domain=dom0&other=ignored", ("dom0", 5)),
        (b"domain=" + b"x" * 64, ("x" * 64, 5)),
    ],
)
def test_plainly_valid_parameters_are_taken(query: bytes, expected: tuple[str, int]) -> None:
    assert fastpath.plain_params(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        b"",
        b"domain=",
        b"domain=" + b"x" * 65,
        b"domain=dom0&domain=dom1",
        b"domain=dom0&top_k=",
        b"domain=dom0&top_k=0",
        b"domain=dom0&top_k=05",
        b"domain=dom0&top_k=+5",
        b"domain=dom0&top_k=1001",
        b"domain=dom0&top_k=2.0",
        b"domain=dom0&top_k=%D9%A3",  # an Arabic-Indic digit: str.isdigit, not ours to judge
    ],
)
def test_anything_else_is_left_to_fastapi(query: bytes) -> None:
    assert fastpath.plain_params(query) is None


def _spy_route(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each request the FastAPI classify routes read (the fast path never calls this)."""
    calls: list[bool] = []
    real = routes.read_images

    async def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(True)
        return await real(*args, **kwargs)

    monkeypatch.setattr(routes, "read_images", spy)
    return calls


async def test_a_raw_image_skips_the_route_and_answers_as_the_route_does(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_route(monkeypatch)
    data = image_bytes(3)
    async with serving(store) as client:
        fast = await client.post(
            "/classify?domain=dom1&top_k=3", content=data, headers={"content-type": "image/png"}
        )
        assert calls == []
        routed = await client.post(
            "/classify?domain=dom1&top_k=3", files={"file": ("a.png", data, "image/png")}
        )
        assert calls == [True]
        assert fast.status_code == routed.status_code == 200
        assert fast.headers["content-type"] == routed.headers["content-type"]
        assert fast.content == routed.content  # byte for byte, same scores
        metrics = (await client.get("/metrics")).text
    assert metric(metrics, "bap_requests_total", domain="dom1", code="200") == 2


@pytest.mark.parametrize(
    ("query", "body", "status", "code"),
    [
        ("domain=nope", image_bytes(0), 404, "unknown_domain"),
        ("domain=dom0", b"not an image", 400, "bad_image"),
        ("domain=dom0", b"", 400, "bad_image"),
        ("domain=dom0", image_bytes(0, size=(300, 300)), 413, "image_too_large"),
    ],
)
async def test_its_errors_are_the_routes_errors(
    store: Path, query: str, body: bytes, status: int, code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_route(monkeypatch)
    async with serving(store, max_pixels=200 * 200) as client:
        fast = await client.post(
            f"/classify?{query}", content=body, headers={"content-type": "image/png"}
        )
        assert calls == []
        routed = await client.post(
            f"/classify?{query}", files={"file": ("a.png", body, "image/png")}
        )
    assert (fast.status_code, fast.json()["error"]) == (status, code)
    assert routed.status_code == status
    assert fast.json() == routed.json()


async def test_odd_parameters_get_fastapis_own_answer(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_route(monkeypatch)
    png = {"content-type": "image/png"}
    async with serving(store) as client:
        missing = await client.post("/classify", content=image_bytes(0), headers=png)
        big_k = await client.post("/classify?domain=dom0&top_k=5000", content=b"x", headers=png)
        padded = await client.post(
            "/classify?domain=dom0&top_k=02", content=image_bytes(0), headers=png
        )
        text = await client.post(
            "/classify?domain=dom0", content=b"x", headers={"content-type": "text/plain"}
        )
    assert (missing.status_code, missing.json()["error"]) == (422, "invalid_parameters")
    assert (big_k.status_code, big_k.json()["error"]) == (422, "invalid_parameters")
    assert padded.status_code == 200 and len(padded.json()["predictions"]) == 2
    assert (text.status_code, text.json()["error"]) == (415, "unsupported_media_type")
    assert len(calls) == 2  # the 422s are refused before the route reads the body


async def test_a_body_over_the_limit_is_refused_mid_stream(store: Path) -> None:
    async def chunks() -> Any:  # no Content-Length: only counting the chunks can stop it
        for _ in range(4):
            yield b"\0" * 1024

    async with serving(store, max_body_bytes=2048) as client:
        r = await client.post(
            "/classify?domain=dom0", content=chunks(), headers={"content-type": "image/png"}
        )
    assert (r.status_code, r.json()["error"]) == (413, "too_large")


async def test_a_client_gone_mid_body_stops_the_read() -> None:
    messages = iter([{"type": "http.request", "body": b"ab", "more_body": True}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    with pytest.raises(ClientDisconnect):
        await fastpath.read_body(receive)


async def test_a_chunked_body_is_read_whole() -> None:
    messages = iter(
        [
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"cd", "more_body": False},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    assert await fastpath.read_body(receive) == b"abcd"
