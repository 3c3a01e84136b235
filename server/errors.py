"""Typed errors and their one mapping to a status code and a JSON body.

Every error a client can cause becomes `{"error": CODE, "detail": "..."}` with a 4xx or 503
status; only a bug in the server becomes a 500, whose traceback goes to the log, not the body.
Under /v2 (the Open Inference Protocol) the body is the protocol's `{"error": "..."}`, the
message that tritonclient raises, with the same status codes.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from model_store import ImageError, ImageTooLarge

from .batching import BatcherClosed, BatcherDied, QueueFull
from .holder import CandidateRefused

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = "1"


class ApiError(Exception):
    """An error with its HTTP status and code, declared once per subclass:
    `class Gone(ApiError, status=410, code="gone")`."""

    status = 500
    code = "internal"

    def __init_subclass__(cls, status: int | None = None, code: str | None = None) -> None:
        super().__init_subclass__()
        cls.status, cls.code = status or cls.status, code or cls.code

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail, self.headers = detail, headers


class BadImage(ApiError, status=400, code="bad_image"):
    """Undecodable, truncated or empty image bytes."""


class BadRequest(ApiError, status=400, code="bad_request"):
    """An inference request body the Open Inference Protocol does not allow, or that does not
    fit the model's inputs and outputs."""


class ClientClosed(ApiError, status=499, code="client_closed_request"):
    """The client went away before sending its whole body (nginx's 499); no one reads this."""


class Unauthorized(ApiError, status=401, code="unauthorized"):
    """An admin call without a bearer token."""


class Forbidden(ApiError, status=403, code="forbidden"):
    """An admin call with a wrong token, or while admin calls are disabled."""


class UnknownDomain(ApiError, status=404, code="unknown_domain"):
    """A domain the served model does not have."""


class UnknownVersion(ApiError, status=404, code="unknown_version"):
    """A model version other than the one this server serves (v2 API)."""


class ReloadRefused(ApiError, status=409, code="reload_refused"):
    """The version CURRENT names failed verification; the old one keeps serving."""


class TooLarge(ApiError, status=413, code="too_large"):
    """A body over the byte limit."""


class ImageTooLargeError(ApiError, status=413, code="image_too_large"):
    """An image whose header declares more pixels than allowed (a decompression bomb)."""


class UnsupportedMediaType(ApiError, status=415, code="unsupported_media_type"):
    """A body that is neither an accepted image type nor a multipart form."""


class BadParameters(ApiError, status=422, code="invalid_parameters"):
    """Query or form fields that do not validate."""


class Unavailable(ApiError, status=503, code="unavailable"):
    """Not ready, draining or queue full; always says when to come back."""

    def __init__(self, detail: str):
        super().__init__(detail, {"Retry-After": RETRY_AFTER_SECONDS})


class NotReady(Unavailable, code="not_ready"):
    """The model is loading, or the server is draining for shutdown."""


class Overloaded(Unavailable, code="queue_full"):
    """The domain's queue is full."""


class BatcherDown(Unavailable, code="batcher_down"):
    """The batching loop died; /readyz says so too, so an orchestrator restarts the process."""


class ResultTimeout(Unavailable, code="result_timeout"):
    """An image waited longer than the configured limit for its result."""


PROTOCOL_PATH = "/v2"


def error_response(exc: ApiError, path: str = "") -> JSONResponse:
    """The error's body for the API that `path` belongs to."""
    if path == PROTOCOL_PATH or path.startswith(PROTOCOL_PATH + "/"):
        body = {"error": exc.detail}  # the protocol's error object: one string
    else:
        body = {"error": exc.code, "detail": exc.detail}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _translate(exc: Exception) -> ApiError:
    """Errors raised outside this module (model_store, batching, FastAPI) as our typed ones."""
    if isinstance(exc, ImageTooLarge):
        return ImageTooLargeError(str(exc))
    if isinstance(exc, ImageError):
        return BadImage(str(exc))
    if isinstance(exc, QueueFull):
        return Overloaded(f"{exc}; retry after {RETRY_AFTER_SECONDS} s")
    if isinstance(exc, BatcherDied):
        return BatcherDown(str(exc))
    if isinstance(exc, BatcherClosed):
        return NotReady(str(exc))
    if isinstance(exc, CandidateRefused):
        return ReloadRefused(str(exc))
    if isinstance(exc, ClientDisconnect):
        return ClientClosed("the client disconnected while sending the request")
    if isinstance(exc, RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return BadParameters("; ".join(parts) or "invalid request parameters")
    if isinstance(exc, HTTPException):  # routing (404/405) and malformed multipart (400)
        error = ApiError(str(exc.detail), exc.headers)
        error.status, error.code = exc.status_code, _http_code(exc.status_code)
        return error
    return exc if isinstance(exc, ApiError) else ApiError("internal error; see the server log")


def _http_code(status: int) -> str:
    return {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(status, "error")


def render(exc: Exception, method: str, path: str) -> JSONResponse:
    """Any exception as the client's JSON error; a server bug's traceback goes to the log."""
    error = _translate(exc)
    if error.status >= 500 and not isinstance(error, Unavailable):
        log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return error_response(error, path)


async def handle(request: Request, exc: Exception) -> JSONResponse:
    return render(exc, request.method, request.url.path)


def install(app: FastAPI) -> None:
    """Register the one handler for every error type the app can meet."""
    for kind in (
        ApiError,
        ImageError,
        QueueFull,
        BatcherClosed,
        BatcherDied,
        CandidateRefused,
        ClientDisconnect,
        RequestValidationError,
        HTTPException,
        Exception,
    ):
        app.add_exception_handler(kind, handle)
