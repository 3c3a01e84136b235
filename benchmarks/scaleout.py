"""Scale-out on loopback: N `python -m server` replicas sharing one store behind haproxy, under a
constant, bounded load; a rolling update (a new version published, each replica reloaded in turn)
and one replica SIGKILLed, then restarted.

`python -m benchmarks.scaleout [--clients C] [--requests N]` runs both on the bundled model and
writes results/scaleout.json; tests/server/test_scaleout.py runs the same at a small scale.

haproxy (Debian's package) health-checks every replica on /readyz (a replica is out while it
loads and once it drains or dies) and retries a request whose connection failed or whose reply
never came on another replica (`retry-on conn-failure empty-response`, `option redispatch`):
classifying an image changes nothing, so replaying it is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from model_store import current_version, derive_version

from .common import RESULTS, ROOT, machine, write_result
from .process import free_port

log = logging.getLogger("benchmarks.scaleout")
CAP_S = 120.0  # the longest any wait here may take; nothing is asserted on how long it took
TOKEN = "scaleout-admin-token-0123456789"
HAPROXY_CONFIG = """\
global
    maxconn 2000
    stats socket {socket} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
    retry-on conn-failure empty-response
frontend bap
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
"""


class ScaleOutError(RuntimeError):
    """haproxy or a replica is missing, or never became ready; the message says which."""


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # set by Cluster.start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _wait(check: Any, what: str) -> None:
    deadline = time.monotonic() + CAP_S
    while not check():
        if time.monotonic() > deadline:
            raise ScaleOutError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


class Cluster:
    """The replicas and haproxy in front of them, on 127.0.0.1."""

    def __init__(self, store: Path, model: str, folder: Path, replicas: int, **settings: Any):
        self.store, self.model, self.folder, self.settings = store, model, folder, settings
        self.replicas = [Replica(f"r{i}", free_port()) for i in range(replicas)]
        self.port = free_port()
        self.socket = folder / "haproxy.sock"
        self._haproxy: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, i: int) -> None:
        """Start replica i on its port and wait until it is ready."""
        r = self.replicas[i]
        flags = {"store": self.store, "model": self.model, "port": r.port, "admin_token": TOKEN}
        args = [f"--{k.replace('_', '-')}={v}" for k, v in (flags | self.settings).items()]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BAP_")}
        with open(self.folder / f"{r.name}.log", "ab") as out:
            r.proc = subprocess.Popen(
                [sys.executable, "-m", "server", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc, log_file = r.proc, self.folder / f"{r.name}.log"

        def ready() -> bool:
            if proc.poll() is not None:
                raise ScaleOutError(f"{r.name} exited:\n{log_file.read_text()[-2000:]}")
            return _answers(r.url + "/readyz")

        _wait(ready, f"{r.name} ready")

    def kill(self, i: int) -> None:
        proc = self.replicas[i].proc
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def reload(self, i: int) -> str:
        """POST /admin/reload on replica i; the version it serves now."""
        headers = {"authorization": f"Bearer {TOKEN}"}
        r = httpx.post(self.replicas[i].url + "/admin/reload", headers=headers, timeout=CAP_S)
        r.raise_for_status()
        return r.json()["version"]

    def version(self, i: int) -> str:
        return httpx.get(self.replicas[i].url + "/readyz", timeout=5).json()["version"]

    def states(self) -> dict[str, str]:
        """haproxy's view: replica name -> UP / DOWN (its `show stat`)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            data = b"".join(iter(lambda: s.recv(65536), b""))
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {
            row["svname"]: row["status"].split()[0]
            for row in rows
            if row["pxname"] == "replicas" and row["svname"] != "BACKEND"
        }

    def wait_state(self, i: int, state: str) -> None:
        name = self.replicas[i].name
        _wait(lambda: self.states().get(name) == state, f"haproxy to mark {name} {state}")

    def __enter__(self) -> Cluster:
        binary = shutil.which("haproxy")
        if binary is None:
            raise ScaleOutError("haproxy not found: apt-get install haproxy (scripts/setup.sh)")
        try:
            for i in range(len(self.replicas)):
                self.start(i)
            servers = "\n".join(
                f"    server {r.name} 127.0.0.1:{r.port} check" for r in self.replicas
            )
            config = self.folder / "haproxy.cfg"
            config.write_text(
                HAPROXY_CONFIG.format(socket=self.socket, port=self.port, servers=servers)
            )
            with open(self.folder / "haproxy.log", "ab") as out:
                self._haproxy = subprocess.Popen(
                    [binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
                )
            _wait(lambda: self.socket.exists(), "haproxy's stats socket")
            for i in range(len(self.replicas)):
                self.wait_state(i, "UP")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        procs = [r.proc for r in self.replicas if r.proc is not None]
        for proc in [*procs, self._haproxy]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*procs, self._haproxy]:
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class Load:
    """`clients` loops posting one image through the balancer until stopped, or until `limit`
    requests or CAP_S seconds, whichever comes first. Counts outcomes and versions served."""

    url: str
    body: bytes
    domain: str
    clients: int
    limit: int
    done: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def wait_for(self, more: int) -> None:
        """Block until `more` requests past the current count have finished."""
        target = self.done + more
        _wait(lambda: self.done >= target or self._stop.is_set(), f"{more} more requests")

    async def _run(self) -> None:
        deadline = time.monotonic() + CAP_S
        headers, params = {"content-type": "image/png"}, {"domain": self.domain}
        limits = httpx.Limits(max_connections=self.clients)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=30) as client:

            async def one() -> None:
                while not self._stop.is_set() and self.done < self.limit:
                    if time.monotonic() > deadline:
                        break
                    try:
                        r = await client.post(
                            "/classify", params=params, content=self.body, headers=headers
                        )
                    except httpx.TransportError as exc:
                        self.failures[type(exc).__name__] += 1
                    else:
                        if r.status_code == 200:
                            self.versions[r.json()["model_version"]] += 1
                        else:
                            self.failures[str(r.status_code)] += 1
                    self.done += 1

            await asyncio.gather(*(one() for _ in range(self.clients)))
        self._stop.set()


def rolling_update(cluster: Cluster, load: Load, between: int) -> dict[str, Any]:
    """Publish a new version (the current one's files, derived), reload each replica in turn
    with `between` requests served between reloads."""
    old = current_version(cluster.store, cluster.model)
    publication, _ = derive_version(cluster.store, cluster.model, old, {})
    new = publication.version
    load.wait_for(between)
    for i in range(len(cluster.replicas)):
        if cluster.reload(i) != new:
            raise ScaleOutError(f"replica {i} did not load {new}")
        load.wait_for(between)
    served = [cluster.version(i) for i in range(len(cluster.replicas))]
    return {"old": old, "new": new, "served": served}


def kill_and_rejoin(cluster: Cluster, load: Load, i: int, between: int) -> dict[str, Any]:
    """SIGKILL replica i under load, let haproxy route around it, restart it, and wait until
    haproxy sends it requests again."""
    load.wait_for(between)
    cluster.kill(i)
    cluster.wait_state(i, "DOWN")
    load.wait_for(between)
    cluster.start(i)
    cluster.wait_state(i, "UP")
    metrics = cluster.replicas[i].url + "/metrics"

    def served() -> float:
        text = httpx.get(metrics, timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("bap_requests_total{") and 'code="200"' in line
        )

    _wait(lambda: served() > 0, f"{cluster.replicas[i].name} to serve again")
    load.wait_for(between)
    return {"rejoined_requests": served()}


def image() -> bytes:
    from .http_bench import fashion_png

    return fashion_png()[0]


@contextmanager
def bundled_store() -> Iterator[Path]:
    """A copy of the bundled store: the rolling update publishes into it."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(shutil.copytree(ROOT / "model_store" / "bundled", Path(tmp) / "store"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=12_000, help="per scenario, at most")
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    settings = vars(args) | {"model": "embedded", "_machine": machine()}
    between = args.requests // (args.replicas + 2)
    figures: dict[str, Any] = {}
    with bundled_store() as store, tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(store, "embedded", Path(tmp), args.replicas, log_level="warning")
        with cluster:
            for name, scenario in (
                ("rolling_update", lambda c, load: rolling_update(c, load, between)),
                ("sigkill", lambda c, load: kill_and_rejoin(c, load, 1, between)),
            ):
                started = time.monotonic()
                with Load(cluster.url, image(), "fashion", args.clients, args.requests) as load:
                    outcome = scenario(cluster, load)
                    load.wait_for(args.requests - load.done)  # the whole bounded load
                seconds = time.monotonic() - started
                figures[name] = outcome | {
                    "requests": load.done,
                    "failed": sum(load.failures.values()),
                    "failures": dict(load.failures),
                    "versions": dict(load.versions),
                    "req_per_s": round(load.done / seconds, 1),
                }
                log.info("%s: %s", name, figures[name])
    write_result("scaleout", settings, figures, RESULTS)


if __name__ == "__main__":
    main()
