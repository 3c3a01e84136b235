"""POST /classify with a raw image body in plain ASGI: the hot path without FastAPI's routing.

py-spy under wrk (32 clients, bundled model, the runtime stubbed out to see the rest) put about
45% of the event loop's CPU per request in FastAPI's router, dependency solving and response
validation, against 25% for decoding the image; the event loop was the bottleneck. This path does
the same work with the same pieces (routes.ClassifyCall, the same typed errors) in a few lines.

It takes only requests whose parameters are plainly valid: `domain` of 1-64 characters, `top_k`
absent or 1-1000 in plain digits, neither repeated. Anything else (multipart, a missing or odd
parameter, another media type) goes on to the FastAPI route, which validates it and answers as
it always did, so every 422 and 415 keeps one author. It sits inside the body-limit and metrics
middlewares, which see its requests like any other.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import render
from .routes import DOMAIN_MAX_CHARS, RAW_TYPES, TOP_K_DEFAULT, TOP_K_MAX, ClassifyCall

PATH = "/classify"
_JSON_HEADERS = [(b"content-type", b"application/json")]


def plain_params(query_string: bytes) -> tuple[str, int] | None:
    """(domain, top_k) when the query is plainly valid, else None (FastAPI then judges it).
    Parsed as Starlette parses it, so both paths see the same values."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs):  # a repeated name: FastAPI's rule for it applies
        return None
    domain, top_k = params.get("domain", ""), params.get("top_k", str(TOP_K_DEFAULT))
    plain_int = top_k.isascii() and top_k.isdigit() and not top_k.startswith("0")
    if not 1 <= len(domain) <= DOMAIN_MAX_CHARS or not plain_int or int(top_k) > TOP_K_MAX:
        return None
    return domain, int(top_k)


def _media_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the body-limit middleware's receive raises past its limit)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class RawClassify:
    """Answers POST /classify with a raw image body itself; passes every other request on."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        params = plain_params(scope["query_string"])
        if params is None or _media_type(scope) not in RAW_TYPES:
            return await self.app(scope, receive, send)
        try:
            call = ClassifyCall.checked(scope["app"].state, *params)
            body = (await call.classify(await read_body(receive))).model_dump_json().encode()
        except Exception as exc:  # the app's one error mapping, as on every other route
            return await render(exc, "POST", PATH)(scope, receive, send)
        headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
