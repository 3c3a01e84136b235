"""`python -m server` / `bap-serve`: flags (or BAP_* variables) -> Settings -> uvicorn.

Every Settings field is a flag of the same name; a flag wins over its environment variable.
Bad settings and a missing model stop the process with one line that says how to fix it.
"""

from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .config import Settings
from .startup import bind, configure_logging, load_model, uvicorn_config


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


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(argv)
    configure_logging(settings)
    if settings.workers > 1:
        from .workers import serve_workers

        sys.exit(serve_workers(settings))
    sock = bind(settings)
    served = load_model(settings)
    server = uvicorn.Server(uvicorn_config(create_app(settings, preloaded=served), settings))
    server.run(sockets=[sock])
    if not server.started:  # the app's start-up failed and uvicorn logged why
        sys.exit(1)


if __name__ == "__main__":
    main()
