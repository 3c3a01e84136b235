"""What starting a server needs before uvicorn runs: logging, the listening socket, the model,
uvicorn's settings.

Each step that can fail stops the process with one line naming what was wrong and the fix,
never a traceback. Shared by `python -m server` and the --workers supervisor and its workers.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from typing import Any

import uvicorn

from model_store import ArtifactError, open_version

from .allocator import return_large_frees
from .config import Settings
from .http_protocol import JoinedWritesHttpTools
from .runner import Served, load_served

log = logging.getLogger("server")


def load_model(settings: Settings) -> Served:
    """Load, verify and warm the version to serve, once, before uvicorn starts; if there is
    no good one, exit with one line naming the fix instead of a traceback."""
    try:
        return load_served(settings)
    except (ArtifactError, OSError, ValueError) as exc:
        raise no_model(settings, exc) from None


def verify_model(settings: Settings) -> None:
    """Check CURRENT's record and every file's SHA-256 without building a runtime: what the
    supervisor of --workers does before starting any worker."""
    try:
        open_version(settings.store, settings.model).verify()
    except (ArtifactError, OSError, ValueError) as exc:
        raise no_model(settings, exc) from None


def no_model(settings: Settings, exc: Exception) -> SystemExit:
    """The exit that says why the model cannot be served and how to fix it, in one line."""
    return SystemExit(
        f"bap-serve: cannot serve model {settings.model!r} from store {settings.store}: {exc}\n"
        "Fix: build the bundled model with `make embedded`, or point --store / BAP_STORE and "
        "--model / BAP_MODEL at a store holding a published version, or make a good version "
        "CURRENT (`python -m model_store rollback` or `set-current VERSION`)."
    )


def bind(settings: Settings, reuse_port: bool = False, port: int | None = None) -> socket.socket:
    """The listening socket, bound before the model loads: uvicorn binds only after the app's
    start-up has logged `ready`, so a taken port would first say ready, then fail.
    `reuse_port`: one of several sockets on `port` (server.workers)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    port = settings.port if port is None else port
    try:
        sock.bind((settings.host, port))
    except OSError as exc:
        sock.close()
        taken = "is already in use" if exc.errno == errno.EADDRINUSE else "cannot be bound"
        sys.exit(
            f"bap-serve: {settings.host}:{port} {taken} ({exc.strerror}); "
            "serve on another port with --port / BAP_PORT (or another address with --host / "
            "BAP_HOST)"
        )
    return sock


def configure_logging(settings: Settings, worker: bool = False) -> None:
    """One line per event at the chosen level; a worker's lines carry its pid."""
    pid = " worker=%(process)d" if worker else ""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s{pid} %(message)s",
    )
    if return_large_frees():
        log.debug("glibc returns freed buffers over 1 MiB to the OS")


def uvicorn_config(app: Any, settings: Settings, **extra: Any) -> uvicorn.Config:
    """uvicorn's settings for a single server and for each worker alike: one write a response
    (http_protocol), no access log (the metrics count every request), the drain time."""
    return uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=False,
        http=JoinedWritesHttpTools,
        timeout_graceful_shutdown=settings.drain_seconds,
        **extra,
    )
