"""The real thing: `python -m server` under uvicorn on a free 127.0.0.1 port, over TCP.

Waiting loops poll for a state (ready, a gauge value, a refused connection) with a generous cap;
no assertion depends on how long anything took.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from benchmarks.common import rss_bytes
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
)
from tests.server.test_errors import CATALOGUE

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PNG = {"content-type": "image/png"}
CAP_SECONDS = 60.0


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "server", *flags]


def wait_for(check: Any, what: str, server: Server | None = None) -> None:
    """Poll `check()` until true; fail (with the server's log) if it never becomes true."""
    deadline = time.monotonic() + CAP_SECONDS
    while not check():
        if server is not None and server.proc.poll() is not None:
            pytest.fail(
                f"server exited ({server.proc.returncode}) before {what}:\n{server.output()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def answers(url: str, path: str, status: int = 200) -> bool:
    try:
        return httpx.get(url + path, timeout=5).status_code == status
    except httpx.TransportError:
        return False


@contextmanager
def server_process(
    store: Path, tmp_path: Path, *, ready: bool = True, **settings: Any
) -> Iterator[Server]:
    """`python -m server` with these settings as flags; `ready`: once /readyz answers 200."""
    port = free_port()
    flags = {"store": store, "model": MODEL, "port": port, "admin_token": TOKEN} | settings
    args = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    log = tmp_path / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAP_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            serve_command(*args), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        if ready:
            wait_for(lambda: answers(server.url, "/readyz"), "ready", server)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=CAP_SECONDS)


# Batches close by size only (per domain, 4 images), so batch counts are exact.
BATCHED = {
    "batching": "per-domain",
    "max_batch_size": 4,
    "max_batch_delay_ms": 10_000,
    "max_body_bytes": 2**20,
    "threads": 1,
}


@pytest.fixture(scope="module")
def shared(published_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only read: starting one costs seconds."""
    tmp = tmp_path_factory.mktemp("shared")
    store = Path(shutil.copytree(published_store, tmp / "store"))
    with server_process(store, tmp, **BATCHED) as s:
        yield s


@pytest.fixture
def server(store: Path, tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own, for tests that change its store or stop it."""
    with server_process(store, tmp_path, **BATCHED) as s:
        yield s


def scrape(server: Server) -> str:
    return httpx.get(server.url + "/metrics").text


async def test_every_endpoint_over_http(shared: Server, published_store: Path) -> None:
    data = image_bytes(5)
    before = scrape(shared)
    async with httpx.AsyncClient(base_url=shared.url) as client:
        requests = [("dom0", image_bytes(i)) for i in range(4)]  # one full batch
        responses = await asyncio.gather(
            *(client.post("/classify", params={"domain": d}, content=b, headers=PNG)
              for d, b in requests)
        )  # fmt: skip
        files = [("file", (f"{i}.png", image_bytes(10 + i))) for i in range(4)]
        batch = await client.post("/classify/batch", params={"domain": "dom1"}, files=files)
        domains = await client.get("/domains")
        health, ready = await client.get("/healthz"), await client.get("/readyz")
        docs = await client.get("/docs")
        unknown = await client.post("/classify", params={"domain": "x"}, content=data, headers=PNG)
        too_big = await client.post(
            "/classify", params={"domain": "dom0"}, content=b"\0" * (2**20 + 1), headers=PNG
        )
        wrong_type = await client.post(
            "/classify", params={"domain": "dom0"}, content=data, headers={"content-type": "text/x"}
        )
    after = scrape(shared)
    reference = Reference(published_store)
    for (domain, body), r in zip(requests, responses, strict=True):
        assert r.status_code == 200, r.text
        assert_matches(r.json(), reference.scores(domain, body))
    assert batch.status_code == 200 and len(batch.json()["results"]) == 4
    assert [d["name"] for d in domains.json()["domains"]] == list(DOMAINS)
    assert health.status_code == ready.status_code == docs.status_code == 200
    assert (unknown.status_code, too_big.status_code, wrong_type.status_code) == (404, 413, 415)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("bap_batch_size_count", domain="dom0") == 1  # 4 requests, 1 batch
    assert delta("bap_requests_total", domain="dom0", code="200") == 4
    assert delta("bap_requests_total", domain="dom0", code="413") == 1
    assert delta("bap_requests_total", domain="unknown", code="404") == 1


async def test_concurrent_mixed_domains_over_http(shared: Server, published_store: Path) -> None:
    requests = [(DOMAINS[i % 3], image_bytes(200 + i)) for i in range(24)]
    before = scrape(shared)
    async with httpx.AsyncClient(base_url=shared.url) as client:
        responses = await asyncio.gather(
            *(client.post("/classify", params={"domain": d, "top_k": 3}, content=b, headers=PNG)
              for d, b in requests)
        )  # fmt: skip
    after = scrape(shared)
    reference = Reference(published_store)
    for (domain, body), r in zip(requests, responses, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["domain"] == domain
        assert_matches(r.json(), reference.scores(domain, body))
    for d in DOMAINS:  # 8 images per domain, batches of 4, one domain each
        batches = [metric(m, "bap_batches_total", domain=d, path="domain") for m in (before, after)]
        images = [metric(m, "bap_batch_size_sum", domain=d) for m in (before, after)]
        assert (batches[1] - batches[0], images[1] - images[0]) == (2, 8)


async def test_sighup_reloads_the_current_version(server: Server, store: Path) -> None:
    publish_random(store, seed=1)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: httpx.get(server.url + "/readyz").json().get("version") == "v2", "v2", server)
    data = image_bytes(3)
    files = [("file", (f"{i}.png", data)) for i in range(4)]
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.post("/classify/batch", params={"domain": "dom2"}, files=files)
    assert r.json()["model_version"] == "v2"
    assert_matches(r.json()["results"][0], Reference(store, "v2").scores("dom2", data))
    assert "model_loaded" in server.output()


def refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_sigterm_drains_in_flight_requests_then_exits(server: Server, store: Path) -> None:
    held = [("dom1", HeldBody(image_bytes(300 + i))) for i in range(4)]  # one full batch
    async with httpx.AsyncClient(base_url=server.url, timeout=CAP_SECONDS) as client:
        in_flight = [
            asyncio.ensure_future(
                client.post("/classify", params={"domain": d}, content=b, headers=PNG)
            )
            for d, b in held
        ]

        def all_in_flight() -> bool:
            return metric(scrape(server), "bap_inflight_requests") == len(held)

        await asyncio.to_thread(wait_for, all_in_flight, "requests in flight", server)
        server.proc.send_signal(signal.SIGTERM)
        # Shutdown has begun once the listening socket is gone; the requests are still open.
        await asyncio.to_thread(wait_for, lambda: refuses_connections(server.url), "shutdown")
        for _, body in held:
            body.release.set()
        responses = await asyncio.gather(*in_flight)
    # uvicorn re-raises the SIGTERM it caught once shutdown is complete, as the exit status.
    assert await asyncio.to_thread(server.proc.wait, CAP_SECONDS) in (0, -signal.SIGTERM)
    reference = Reference(store)
    for (domain, body), r in zip(held, responses, strict=True):
        assert r.status_code == 200, r.text
        assert_matches(r.json(), reference.scores(domain, body.data))
    assert "stopped" in server.output()


@pytest.mark.parametrize("problem", ["missing store", "corrupt version"])
def test_no_good_model_stops_with_the_fix_not_a_traceback(store: Path, problem: str) -> None:
    if problem == "corrupt version":
        weights = store / MODEL / "v1" / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-10])
    else:
        store = store / "nowhere"
    result = subprocess.run(
        serve_command(f"--store={store}", f"--model={MODEL}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CAP_SECONDS,
    )
    assert result.returncode != 0
    assert "Fix:" in result.stderr and "BAP_STORE" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_stops_before_ready_with_the_setting_named(store: Path) -> None:
    """Binding comes first: a taken port is one line naming it and BAP_PORT, not a `ready`
    log followed by uvicorn's `[Errno 98]`."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            serve_command(f"--store={store}", f"--model={MODEL}", f"--port={port}"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CAP_SECONDS,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "ready model=" not in output and "Traceback" not in output
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "--port / BAP_PORT" in result.stderr


def test_bad_setting_stops_with_the_flag_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAP_")} | {
        "BAP_MAX_BATCH_SIZE": "0"
    }
    result = subprocess.run(
        serve_command(f"--store={tmp_path}"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CAP_SECONDS,
    )
    assert result.returncode != 0
    assert "--max-batch-size" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("case", sorted(c for c, spec in CATALOGUE.items() if not spec[3]))
async def test_hostile_request_over_tcp(shared: Server, case: str) -> None:
    """The in-process catalogue again, through uvicorn's HTTP parsing (same settings only)."""
    method, url, kwargs, _, status, code = CATALOGUE[case]
    async with httpx.AsyncClient(base_url=shared.url) as client:
        r = await client.request(method, url, **kwargs)
    assert r.status_code == status, r.text
    assert r.json() == {"error": code, "detail": r.json()["detail"]}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
async def test_large_images_memory_goes_back_to_the_os(store: Path, tmp_path: Path) -> None:
    """Decoded photos under the pixel limit are freed for good (server/allocator.py): with
    glibc's moving mmap threshold the server kept ~20 MB per concurrent 5 MP decode."""
    out = io.BytesIO()
    Image.new("RGB", (2500, 2000), (200, 30, 90)).save(out, "PNG")  # 5 MP, a few KB
    big = out.getvalue()
    with server_process(store, tmp_path, decode_concurrency=4) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=CAP_SECONDS) as client:
            await client.post("/classify", params={"domain": "dom0"}, content=big, headers=PNG)
            before = rss_bytes(server.proc.pid) / 2**20
            for _ in range(3):
                responses = await asyncio.gather(
                    *(client.post("/classify", params={"domain": "dom0"}, content=big, headers=PNG)
                      for _ in range(8))
                )  # fmt: skip
                assert all(r.status_code == 200 for r in responses)
            after = rss_bytes(server.proc.pid) / 2**20
    assert after - before < 40, f"RSS {before:.0f} -> {after:.0f} MiB"
