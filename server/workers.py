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
SIGTERM drains every worker) with these changes: a worker that dies is replaced on its own
socket, and its live gauges leave the metrics folder; one that fails start-up stops the server;
SIGHUP is passed to every worker, which reloads in place and refuses a bad version as a single
server does (uvicorn would restart the workers); POST /admin/reload on any worker asks the
supervisor for that SIGHUP (ModelHolder.reload_everywhere). Metrics use prometheus_client's
multiprocess mode: every worker writes its values into one folder, which each worker's /metrics
adds up.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
from functools import partial

import uvicorn
from fastapi import FastAPI
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from .app import create_app
from .config import Settings
from .startup import bind, configure_logging, load_model, verify_model

log = logging.getLogger(__name__)


class Supervisor(Multiprocess):
    """uvicorn's supervisor with one socket per worker, SIGHUP passed on, exit status told."""

    stopped = False  # by SIGTERM or SIGINT, rather than by a worker failing start-up

    def __init__(self, config: uvicorn.Config, slots: list[socket.socket]):
        super().__init__(config, sockets=[])
        self.slots = slots  # worker i listens on slots[i], and so does its replacement

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in self.slots]

    def _start(self, slot: socket.socket) -> Process:
        process = Process(self.config, [slot])
        process.start()
        return process

    def keep_subprocess_alive(self) -> None:
        """Replace a worker that exited or stopped answering health pings (killed first)."""
        if self.should_exit.is_set():
            return
        for i, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.pid is not None:
                mark_process_dead(process.pid)
            if process.exitcode == STARTUP_FAILURE:  # it said why; every restart would fail too
                log.error("worker=%s failed to start; stopping", process.pid)
                self.should_exit.set()
                return
            log.warning("worker=%s exited (%s); starting another", process.pid, process.exitcode)
            self.processes[i] = self._start(self.slots[i])

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
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
    """One socket per worker on one port. A plain bind first, so a port already taken (by any
    server, a multi-worker one of ours too) stops the start as it does a single server's."""
    bind(settings).close()
    first = bind(settings, reuse_port=True)
    port = first.getsockname()[1]  # the one chosen, when --port is 0
    others = [bind(settings, reuse_port=True, port=port) for _ in range(settings.workers - 1)]
    return [first, *others]


def worker_app(settings: Settings, supervisor: int) -> FastAPI:
    """One worker's app (uvicorn calls this in the spawned process): the version loaded,
    verified and warmed here; if that fails, one line and the status that stops the server."""

    configure_logging(settings, worker=True)
    try:
        served = load_model(settings)
    except SystemExit as refused:  # its one line, and uvicorn's status for a failed start
        sys.stderr.write(f"{refused.code}\n")
        sys.exit(STARTUP_FAILURE)
    return create_app(settings, preloaded=served, supervisor=supervisor)


def serve_workers(settings: Settings) -> int:
    """Bind, verify the model, then run settings.workers workers until SIGTERM (0) or a failed
    start (1)."""
    slots = listening_sockets(settings)
    verify_model(settings)
    with tempfile.TemporaryDirectory(prefix="bap-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # read by the workers' prometheus_client
        config = uvicorn.Config(
            partial(worker_app, settings, os.getpid()),
            factory=True,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=settings.drain_seconds,
        )
        supervisor = Supervisor(config, slots)
        supervisor.run()
        return 0 if supervisor.stopped else 1
