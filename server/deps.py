"""Dependencies as `Annotated` aliases: settings, the served version, the batcher, admin auth.

All `async def`: none blocks, and FastAPI runs a plain `def` dependency in its threadpool, a
thread hop per dependency per request (py-spy put a quarter of the request path's CPU there).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.datastructures import State

from .batching import Batcher
from .config import Settings, get_settings
from .errors import Forbidden, NotReady, Unauthorized
from .holder import ModelHolder
from .runner import Served


async def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


def running_batcher(state: State) -> Batcher:
    """The app's batcher; 503 before start-up ends and once draining starts."""
    if state.batcher is None:
        raise NotReady("the server is starting or shutting down; retry shortly")
    return state.batcher


def current_served(state: State) -> Served:
    """The version a request will use, fixed when the request starts; 503 until one is warm."""
    if state.holder.current is None or state.batcher is None:
        raise NotReady("the model is not loaded and warmed yet; retry shortly")
    return state.holder.current


async def get_batcher(request: Request) -> Batcher:
    return running_batcher(request.app.state)


async def get_served(request: Request) -> Served:
    return current_served(request.app.state)


async def require_admin(
    settings: Annotated[Settings, Depends(get_settings)],
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Bearer token check; admin routes are off entirely unless a token is configured."""
    if settings.admin_token is None:
        raise Forbidden("admin endpoints are disabled; set BAP_ADMIN_TOKEN to enable them")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "send the admin token as `Authorization: Bearer <token>`",
            {"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(token.encode(), settings.admin_token.get_secret_value().encode()):
        raise Forbidden("wrong admin token")


HolderDep = Annotated[ModelHolder, Depends(get_holder)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
ServedDep = Annotated[Served, Depends(get_served)]
AdminDep = Depends(require_admin)
