"""No silent hangs: a dead batcher answers 503 (and /readyz says so), a failing observer cannot
kill the loop, and a request waits for its result at most result_timeout_s."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from server import create_app
from server.batching import Batch, BatcherDied
from tests.server.conftest import image_bytes, running, settings_for
from tests.server.test_batching import Recorder, batcher

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}


def broken_take(*args: Any) -> list[Any]:
    raise RuntimeError("a bug in batching")


async def test_a_dead_loop_fails_waiting_and_new_items() -> None:
    async with batcher(Recorder(), max_batch_size=1) as b:
        b._take = broken_take  # type: ignore[method-assign]
        with pytest.raises(BatcherDied, match="a bug in batching"):
            await b.submit("v1", "a", 1)  # waiting when the loop died
        with pytest.raises(BatcherDied, match="needs a restart"):
            await b.submit("v1", "a", 2)  # after
        assert isinstance(b.failure, RuntimeError)


class FailingObserver:
    def queued(self, domain: str, delta: int) -> None:
        raise ValueError("metrics bug")

    def ran(self, batch: Batch, seconds: float) -> None:
        raise ValueError("metrics bug")


async def test_an_observer_that_raises_cannot_kill_the_loop() -> None:
    async with batcher(Recorder(), max_batch_size=1, observer=FailingObserver()) as b:
        assert await b.submit("v1", "a", 1) == ("a", 1)
        assert await b.submit("v1", "a", 2) == ("a", 2)
        assert b.failure is None


async def test_a_dead_batcher_is_503_and_not_ready(store: Path) -> None:
    app = create_app(settings_for(store))
    async with running(app) as client:
        app.state.batcher._take = broken_take
        r = await client.post(
            "/classify", params={"domain": "dom0"}, content=image_bytes(1), headers=PNG
        )
        ready = await client.get("/readyz")
        again = await client.post(
            "/classify", params={"domain": "dom0"}, content=image_bytes(1), headers=PNG
        )
    assert r.status_code == 503 and r.json()["error"] == "batcher_down"
    assert "retry-after" in r.headers
    assert ready.status_code == 503 and ready.json()["error"] == "batcher_down"
    assert again.status_code == 503 and again.json()["error"] == "batcher_down"


async def test_a_result_that_never_comes_is_503_after_the_limit(store: Path) -> None:
    """The model never answers (its run blocks until the test releases it)."""
    release = threading.Event()
    app = create_app(settings_for(store, result_timeout_s=0.05))
    async with running(app) as client:
        batcher_run = app.state.batcher._run

        def stuck(batch: Batch) -> list[Any]:
            release.wait()
            return batcher_run(batch)

        app.state.batcher._run = stuck
        try:
            r = await client.post(
                "/classify", params={"domain": "dom0"}, content=image_bytes(1), headers=PNG
            )
        finally:
            release.set()
    assert r.status_code == 503 and r.json()["error"] == "result_timeout"
    assert r.headers["retry-after"] and "result_timeout_s" in r.json()["detail"]
