"""Two pure-ASGI wrappers: a body size limit enforced as bytes arrive, and request metrics."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import TooLarge, error_response
from .metrics import Metrics

CLASSIFY_PATHS = ("/classify", "/classify/batch")
# POST /v2/models/{domain}[/versions/{v}]/infer: the Open Inference Protocol's classify
V2_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class BodyLimit:
    """413 for a body over `limit` bytes: at once if Content-Length says so, else mid-stream.

    Counting the chunks as they arrive (LitServe's MaxSizeMiddleware) also stops chunked
    uploads that declare no length. The mid-stream error is raised inside the route's body read,
    so the app's error handler answers it.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            error = self._error(int(declared))
            return await error_response(error, scope["path"])(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._error(seen, so_far=True)
            return message

        await self.app(scope, counted, send)

    def _error(self, size: int, so_far: bool = False) -> TooLarge:
        at_least = "at least " if so_far else ""
        return TooLarge(f"request body is {at_least}{size} bytes; the limit is {self.limit}")


def classify_domain(scope: Scope) -> str | None:
    """The domain a classify or v2 infer request names ("" if none); None for other requests."""
    path = scope["path"]
    if path in CLASSIFY_PATHS:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return query.get("domain", [""])[0]
    if path.startswith("/v2/") and (match := V2_INFER.fullmatch(path)):
        return match[1]
    return None


class RequestMetrics:
    """Duration, outcome and in-flight count of every classify and v2 infer request, by known
    domain."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (name := classify_domain(scope)) is None:
            return await self.app(scope, receive, send)
        domain = self.metrics.domain_label(name)
        code = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        self.metrics.request_started()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request_finished(domain, code, time.perf_counter() - started)
