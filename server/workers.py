"""`--workers N`: N server processes on one port, each with its own event loop, batcher and
copy of the model, under one supervisor process.

Why: one process parses HTTP, decodes images and writes responses on one event-loop thread,
and under many clients of a small model that thread, not the model, sets the pace (py-spy,
2-core box, bundled model, 32 clients: the loop busy while the inference threads idled). Two
processes spread that work over the cores, as Triton and `uvicorn --workers` do; each holds its
own model, so memory grows with N and a large model, whose inference already keeps every core
busy, gains nothing.

Each worker listens on a socket of its own (SO_REUSEPORT), so the kernel spreads connections
evenly: on one shared socket the first worker to wake accepted most of a burst (27 of wrk's 32
connections), and p99 at 32 clients was 44-46 ms against 36-41 ms with a socket each.

The supervisor is uvicorn's (`uvicorn.supervisors.Multiprocess`: spawned workers, health pings,
SIGTERM drains every worker) with these changes: a worker that dies is replaced on a fresh
socket, and its live gauges leave the metrics folder; a failed start stops the server only
before every worker has come up once (later, say after a refused version, the others keep
serving and the start is retried with growing waits); SIGHUP is passed to every worker, which
reloads in place and refuses a bad version as a single server does (uvicorn would restart the
workers), and held for a worker still starting; POST /admin/reload on any worker asks the
supervisor for that SIGHUP (ModelHolder.reload_everywhere). Metrics use prometheus_client's
multiprocess mode: every worker writes its values into one folder, which each worker's /metrics
adds up.

Measured (`python -m benchmarks peers`, bundled model, 32 clients, three runs on 2026-12-06 at
the final request path): 1,740-1,973 req/s with p99 23-27 ms for 2 workers against 1,266-1,541
req/s with p99 35-42 ms for one process; 336-342 against 135 MiB RSS.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import time
from functools import partial

import uvicorn
from fastapi import FastAPI
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from .app import create_app
from .config import Settings
from .runner import load_served
from .startup import bind, configure_logging, no_model, uvicorn_config, verify_model

log = logging.getLogger(__name__)
METRICS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's switch to multiprocess mode
LISTEN_BACKLOG = 2048  # uvicorn's default
BACKOFF_MAX_S = 60.0  # the longest wait between starts of a worker that keeps failing


class Supervisor(Multiprocess):
    """uvicorn's supervisor with one socket per worker, SIGHUP passed on, exit status told."""

    stopped = False  # by SIGTERM or SIGINT, rather than by a worker failing start-up

    def __init__(self, config: uvicorn.Config, settings: Settings, slots: list[socket.socket]):
        super().__init__(config, sockets=[])
        self.settings, self.slots = settings, slots  # worker i listens on slots[i]
        self.port = slots[0].getsockname()[1]
        self.all_up = False  # every worker has been ready once; from then on none stops the server
        self.backoff = [0.0] * len(slots)  # seconds before slot i's next start after failed ones
        self.start_at: dict[int, float] = {}  # slot -> when its next worker starts
        self.hup_pending: set[int] = set()  # workers still starting, which get SIGHUP once ready

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in self.slots]

    def _start(self, slot: socket.socket) -> Process:
        process = Process(self.config, [slot])
        process.start()
        return process

    def keep_subprocess_alive(self) -> None:
        """Replace a worker that exited or stopped answering health pings (killed first); pass
        on a SIGHUP that found a worker still starting."""
        if self.should_exit.is_set():
            return
        for i, process in enumerate(self.processes):
            if i in self.start_at:
                if time.monotonic() >= self.start_at[i]:
                    del self.start_at[i]
                    self.processes[i] = self._start(self.slots[i])
                continue
            if not process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                self._retire(i, process)
                if self.should_exit.is_set():
                    return
        self._pass_hup()
        if not self.all_up:
            self.all_up = all(p.is_ready(timeout=1) for p in self.processes)

    def _retire(self, i: int, process: Process) -> None:
        process.kill()
        process.join()
        mark_process_dead(process.pid)
        self.hup_pending.discard(process.pid)
        # Its socket stays in the port's group while the supervisor holds it, and the kernel
        # would queue a share of new connections there for the replacement's whole start: a
        # fresh socket takes its place, listening only once the replacement is up.
        self.slots[i].close()
        self.slots[i] = bind(self.settings, reuse_port=True, port=self.port)
        failed = process.exitcode == STARTUP_FAILURE  # it said why in one line
        if failed and not self.all_up:  # the server never came up: every restart would fail too
            log.error("worker=%s failed to start; stopping", process.pid)
            self.should_exit.set()
            return
        # After a refused version CURRENT may be bad while the others serve the old one: keep
        # serving on them and try again later, never stop the server for it.
        self.backoff[i] = min(BACKOFF_MAX_S, max(1.0, 2 * self.backoff[i])) if failed else 0.0
        log.warning(
            "worker=%s exited (%s); another starts in %.0f s",
            process.pid,
            process.exitcode,
            self.backoff[i],
        )
        self.start_at[i] = time.monotonic() + self.backoff[i]

    def handle_hup(self) -> None:
        """Every running worker reloads; one still starting gets the signal once it is ready
        (before that, SIGHUP would end it), and a slot waiting to restart loads CURRENT anyway."""
        self.hup_pending |= {
            process.pid
            for i, process in enumerate(self.processes)
            if i not in self.start_at and process.pid is not None
        }
        self._pass_hup()

    def _pass_hup(self) -> None:
        """SIGHUP to each worker owed one that is ready for it."""
        for process in self.processes:
            if process.pid in self.hup_pending and process.is_ready(timeout=1):
                self.hup_pending.discard(process.pid)
                os.kill(process.pid, signal.SIGHUP)

    def handle_term(self) -> None:
        self._stop()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop()
        super().handle_int()

    def _stop(self) -> None:
        """Close the supervisor's copies of the sockets: once each worker closes its own on
        draining, new connections are refused (and a load balancer tries elsewhere) instead of
        waiting in a queue nobody accepts from."""
        self.stopped = True
        for slot in self.slots:
            slot.close()

    def handle_ttin(self) -> None:
        log.warning("SIGTTIN ignored: the number of workers is --workers")

    def handle_ttou(self) -> None:
        log.warning("SIGTTOU ignored: the number of workers is --workers")


def listening_sockets(settings: Settings) -> list[socket.socket]:
    """One socket per worker on one port, listening at once: connections made while the
    workers load wait for them, and no other server can bind the port meanwhile (a plain bind
    first, so a port already taken stops the start as it does a single server's)."""
    bind(settings).close()
    first = bind(settings, reuse_port=True)
    port = first.getsockname()[1]  # the one chosen, when --port is 0
    others = [bind(settings, reuse_port=True, port=port) for _ in range(settings.workers - 1)]
    slots = [first, *others]
    for slot in slots:
        slot.listen(LISTEN_BACKLOG)
    return slots


def worker_app(settings: Settings, supervisor: int) -> FastAPI:
    """One worker's app (uvicorn calls this in the spawned process): the version loaded,
    verified and warmed here; if that fails, one line and the status for a failed start."""
    configure_logging(settings, worker=True)
    try:
        served = load_served(settings)
    except Exception as exc:  # any error, a runtime's own too: its one line, no restart loop
        sys.stderr.write(f"{no_model(settings, exc).code}\n")
        sys.exit(STARTUP_FAILURE)
    return create_app(settings, preloaded=served, supervisor=supervisor)


def serve_workers(settings: Settings) -> int:
    """Bind, verify the model, then run settings.workers workers until SIGTERM (0) or a failed
    start (1)."""
    slots = listening_sockets(settings)
    verify_model(settings)
    with tempfile.TemporaryDirectory(prefix="bap-metrics-") as folder:
        os.environ[METRICS_FOLDER] = folder  # read by the workers' prometheus_client
        try:
            config = uvicorn_config(
                partial(worker_app, settings, os.getpid()),
                settings,
                factory=True,
                backlog=LISTEN_BACKLOG,
            )
            supervisor = Supervisor(config, settings, slots)
            supervisor.run()
        finally:
            del os.environ[METRICS_FOLDER]
        return 0 if supervisor.stopped else 1
