"""`python -m server` / `bap-serve`: flags (or BAP_* variables) -> Settings -> uvicorn.

Every Settings field is a flag of the same name; a flag wins over its environment variable.
Bad settings and a missing model stop the process with one line that says how to fix it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys

import uvicorn
from pydantic import ValidationError

from model_store import ArtifactError, open_version

from .allocator import return_large_frees
from .app import create_app
from .config import Settings
from .runner import Served, load_served

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bap-serve", description="Serve a budget-pruned multi-domain model over HTTP."
    )
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            default=None,
            metavar=name.upper(),
            help=f"{field.description}; env BAP_{name.upper()}; "
            f"default {field.get_default(call_default_factory=True)}",
        )
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    """Flags over environment over defaults; exits with the fix on a bad value."""
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        sys.exit(f"bap-serve: invalid settings: {problems}")


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


def bind(settings: Settings) -> socket.socket:
    """The listening socket, bound before the model loads: uvicorn binds only after the app's
    start-up has logged `ready`, so a taken port would first say ready, then fail."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        taken = "is already in use" if exc.errno == errno.EADDRINUSE else "cannot be bound"
        sys.exit(
            f"bap-serve: {settings.host}:{settings.port} {taken} ({exc.strerror}); "
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


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(argv)
    configure_logging(settings)
    sock = bind(settings)
    if settings.workers > 1:
        verify_model(settings)
        from .workers import serve_workers

        sys.exit(serve_workers(settings, sock))
    served = load_model(settings)
    config = uvicorn.Config(
        create_app(settings, preloaded=served),
        log_level=settings.log_level,
        access_log=False,  # the metrics count every request; the log stays quiet
        timeout_graceful_shutdown=settings.drain_seconds,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # the app's start-up failed and uvicorn logged why
        sys.exit(1)


if __name__ == "__main__":
    main()
