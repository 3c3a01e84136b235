"""A live `python -m server` on a free loopback port, started and stopped by the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .common import ROOT

START_CAP_S = 120.0  # a cold start imports torch and warms every domain; slow on a busy box


class ServerFailed(RuntimeError):
    """The server exited or never became ready; the message carries its log."""


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(store: Path, model: str, log_dir: Path, **settings: Any) -> Iterator[Server]:
    """Run the server on 127.0.0.1 with these settings (flags), wait for /readyz, then stop it
    with SIGTERM. BAP_* variables of the caller are dropped so only these settings apply."""
    port = free_port()
    flags = {"store": store, "model": model, "port": port, "log_level": "warning"} | settings
    args = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    with _running([sys.executable, "-m", "server", *args], port, log_dir, {}) as server:
        yield server


@contextmanager
def serve_plain(store: Path, model: str, domain: str, log_dir: Path) -> Iterator[Server]:
    """Run benchmarks.plain_app (the plain FastAPI comparison) under uvicorn, like `serve`."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.plain_app:app", f"--port={port}"]
    command += ["--log-level=warning", "--no-access-log"]
    env = {"BENCH_STORE": str(store), "BENCH_MODEL": model, "BENCH_DOMAIN": domain}
    with _running(command, port, log_dir, env) as server:
        yield server


@contextmanager
def _running(command: list[str], port: int, log_dir: Path, env: dict[str, str]) -> Iterator[Server]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BAP_")}
    log = log_dir / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=base | env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", proc.pid)
    try:
        _wait_ready(server, proc, log)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_CAP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(server.url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise ServerFailed(f"server not ready after {START_CAP_S:.0f} s:\n{log.read_text()[-2000:]}")
