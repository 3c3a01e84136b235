"""`--workers N`: N server processes share the listening socket, each with its own event loop,
batcher and copy of the model, under one supervisor process.

Why: one process parses HTTP, decodes images and writes responses on one event-loop thread,
and under many clients of a small model that thread, not the model, sets the pace (py-spy,
2-core box, bundled model, 32 clients: the loop busy while the inference threads idled). Two
processes spread that work over the cores, as Triton and `uvicorn --workers` do; each holds its
own model, so memory grows with N and a large model, whose inference already keeps every core
busy, gains nothing.

The supervisor is uvicorn's own (`uvicorn.supervisors.Multiprocess`: spawned workers on the
socket it bound, a worker that dies is replaced, one that fails start-up stops the server,
SIGTERM drains every worker) with two changes: SIGHUP is passed to every worker, which reloads in
place and refuses a bad version as a single server does (uvicorn would restart the workers),
and a worker that exits has its live gauges removed from the metrics folder. POST /admin/reload
on any worker asks the supervisor for that SIGHUP (ModelHolder.reload_everywhere). Metrics use
prometheus_client's multiprocess mode: every worker writes its values into one folder, which
each worker's /metrics adds up.
"""

from __future__ import annotations

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
from uvicorn.supervisors.multiprocess import Multiprocess

from .app import create_app
from .config import Settings


class Supervisor(Multiprocess):
    """uvicorn's supervisor, SIGHUP passed on, dead workers' gauges removed, exit told."""

    stopped = False  # by SIGTERM or SIGINT, rather than by a worker failing start-up

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)

    def handle_term(self) -> None:
        self.stopped = True
        super().handle_term()

    def handle_int(self) -> None:
        self.stopped = True
        super().handle_int()

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            if pid is not None:
                mark_process_dead(pid)


def worker_app(settings: Settings, supervisor: int) -> FastAPI:
    """One worker's app (uvicorn calls this in the spawned process): the version loaded,
    verified and warmed here; if that fails, one line and the status that stops the server."""
    from .__main__ import configure_logging, load_model

    configure_logging(settings, worker=True)
    try:
        served = load_model(settings)
    except SystemExit as refused:  # its one line, and uvicorn's status for a failed start
        sys.stderr.write(f"{refused.code}\n")
        sys.exit(STARTUP_FAILURE)
    return create_app(settings, preloaded=served, supervisor=supervisor)


def serve_workers(settings: Settings, sock: socket.socket) -> int:
    """Run settings.workers workers on `sock` until SIGTERM (0) or a failed start (1)."""
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
        supervisor = Supervisor(config, sockets=[sock])
        supervisor.run()
        return 0 if supervisor.stopped else 1
