"""`python -m server --workers 2`: two worker processes on one port under uvicorn's supervisor.

What a single server promises holds across the workers: /metrics adds up every worker, a reload
(POST /admin/reload on either worker, or SIGHUP to the supervisor) reaches every worker and a bad
version is refused by each, a worker that dies is replaced, SIGTERM drains and exits 0, and a
model that cannot be served stops the start with one line. Each worker counts one loaded
version at start-up, so the reload counter tells how many workers did what, whichever worker
answers the scrape.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from uvicorn.config import STARTUP_FAILURE

from model_store import set_current
from server.workers import worker_app
from tests.server.conftest import (
    MODEL,
    TOKEN,
    Reference,
    assert_matches,
    image_bytes,
    metric,
    publish_random,
    settings_for,
)
from tests.server.test_process import (
    CAP_SECONDS,
    ROOT,
    Server,
    answers,
    scrape,
    serve_command,
    server_process,
    wait_for,
)

pytestmark = pytest.mark.slow
ADMIN = {"authorization": f"Bearer {TOKEN}"}
WORKERS = 2


def workers_of(server: Server) -> set[int]:
    """The supervisor's worker processes (its other child is multiprocessing's tracker)."""
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(child)
        for child in children
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def reloads(server: Server, result: str = "loaded") -> float:
    return metric(scrape(server), "bap_model_reloads_total", result=result)


def versions_answered(server: Server, times: int = 8) -> set[str]:
    """/readyz's version over fresh connections (each may land on either worker)."""
    return {httpx.get(server.url + "/readyz").json()["version"] for _ in range(times)}


def test_a_reload_reaches_every_worker_and_metrics_add_up(store: Path, tmp_path: Path) -> None:
    with server_process(store, tmp_path, workers=WORKERS) as server:
        wait_for(lambda: reloads(server) == WORKERS, "every worker loaded", server)
        assert len(workers_of(server)) == WORKERS
        data = image_bytes(5)
        for _ in range(6):
            r = httpx.post(
                server.url + "/classify",
                params={"domain": "dom1"},
                content=data,
                headers={"content-type": "image/png"},
            )
            assert_matches(r.json(), Reference(store).scores("dom1", data))
        assert metric(scrape(server), "bap_requests_total", domain="dom1", code="200") == 6
        port = server.url.rsplit(":", 1)[1]  # the workers share it; nobody else may
        taken = start_fails(store, f"--port={port}")
        assert taken.returncode == 1 and f"127.0.0.1:{port} is already in use" in taken.stderr

        publish_random(store, seed=1)  # v2 becomes CURRENT; the admin call reloads both
        r = httpx.post(server.url + "/admin/reload", headers=ADMIN, timeout=CAP_SECONDS)
        assert r.status_code == 200 and r.json()["version"] == "v2", r.text
        wait_for(lambda: reloads(server) == 2 * WORKERS, "every worker reloaded", server)
        assert versions_answered(server) == {"v2"}

        publish_random(store, seed=2)  # v3: SIGHUP to the supervisor reloads both
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(server) == 3 * WORKERS, "every worker reloaded", server)
        assert versions_answered(server) == {"v3"}

        v4 = publish_random(store, seed=3)  # a damaged CURRENT: each worker refuses it
        weights = store / MODEL / v4 / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-10])
        r = httpx.post(server.url + "/admin/reload", headers=ADMIN, timeout=CAP_SECONDS)
        assert r.status_code == 409 and "still serving v3" in r.text, r.text
        wait_for(lambda: reloads(server, "refused") == WORKERS, "every worker refused", server)
        assert versions_answered(server) == {"v3"}

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=CAP_SECONDS) == 0
    output = server.output()
    assert output.count("stopped") == WORKERS and "Traceback" not in output


def test_a_dead_worker_is_replaced_and_its_gauges_go(store: Path, tmp_path: Path) -> None:
    with server_process(store, tmp_path, workers=WORKERS, threads=1) as server:
        wait_for(lambda: reloads(server) == WORKERS, "every worker loaded", server)
        per_worker = metric(scrape(server), "bap_inference_workers") / WORKERS
        first = workers_of(server)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: victim not in (now := workers_of(server)) and len(now) == WORKERS,
            "a replacement worker",
            server,
        )
        wait_for(lambda: reloads(server) == WORKERS + 1, "the replacement loaded", server)
        # the dead worker's live gauges are gone, the replacement's are there
        assert metric(scrape(server), "bap_inference_workers") == per_worker * WORKERS
        assert versions_answered(server) == {"v1"}


def test_a_worker_that_dies_while_current_is_bad_waits_for_a_good_one(
    store: Path, tmp_path: Path
) -> None:
    """After a refused version the other worker keeps serving the old one; the dead worker's
    replacement cannot load CURRENT and is retried, with growing waits, instead of stopping the
    server; once CURRENT is good again it comes up."""
    with server_process(store, tmp_path, workers=WORKERS) as server:
        wait_for(lambda: reloads(server) == WORKERS, "every worker loaded", server)
        v2 = publish_random(store, seed=1)
        weights = store / MODEL / v2 / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-10])
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(server, "refused") == WORKERS, "every worker refused", server)
        os.kill(min(workers_of(server)), signal.SIGKILL)
        wait_for(lambda: "another starts in 2 s" in server.output(), "a second try", server)
        assert server.proc.poll() is None and versions_answered(server) == {"v1"}
        set_current(store, MODEL, "v1")
        wait_for(lambda: reloads(server) == WORKERS + 1, "the replacement loaded", server)
        assert len(workers_of(server)) == WORKERS and versions_answered(server) == {"v1"}


def test_sighup_while_the_workers_start_reaches_them_once_they_are_ready(
    store: Path, tmp_path: Path
) -> None:
    """Before a worker's app is up SIGHUP would end it: the supervisor holds the signal for it."""
    with server_process(store, tmp_path, ready=False, workers=WORKERS) as server:
        wait_for(lambda: "Started parent process" in server.output(), "the supervisor", server)
        server.proc.send_signal(signal.SIGHUP)  # the workers are importing and loading now
        wait_for(lambda: answers(server.url, "/readyz"), "ready", server)
        wait_for(lambda: reloads(server) == 2 * WORKERS, "every worker reloaded", server)
        assert "exited" not in server.output()


def test_an_unexpected_load_error_is_one_line_and_a_failed_start(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A runtime's own exception in a worker's load: the one line, and the status that makes
    the supervisor stop instead of restarting the worker for ever."""

    def broken(settings: object) -> None:
        raise RuntimeError("onnxruntime: bad allocation")

    monkeypatch.setattr("server.workers.load_served", broken)
    with pytest.raises(SystemExit) as stopped:
        worker_app(settings_for(store, workers=WORKERS), supervisor=os.getpid())
    assert stopped.value.code == STARTUP_FAILURE
    error = capsys.readouterr().err
    assert "bad allocation" in error and "Fix:" in error and "Traceback" not in error


def start_fails(store: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = serve_command(f"--store={store}", f"--model={MODEL}", "--workers=2", *flags)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAP_")}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CAP_SECONDS
    )


def test_a_model_that_cannot_be_served_stops_the_start_in_one_line(store: Path) -> None:
    weights = store / MODEL / "v1" / "weights.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-10])  # caught by the supervisor before any worker starts
    result = start_fails(store)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("Fix:") == 1 and "Started parent" not in result.stderr

    weights.write_bytes(intact)  # sound files, but the workers cannot build the runtime:
    result = start_fails(store, "--precision=int8")  # int8 needs compiled graphs
    assert result.returncode == 1, result.stderr  # stopped, not restarted for ever
    assert "int8 runs only as compiled graphs" in result.stderr
    assert "Traceback" not in result.stderr
