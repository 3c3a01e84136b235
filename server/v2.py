"""The Open Inference Protocol (KServe v2, Triton's HTTP API) beside /classify; each domain is a
model. Teams whose clients and gateways speak it (tritonclient, KServe) call us unchanged.

GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{domain}[/versions/{v}][/ready], and
POST /v2/models/{domain}[/versions/{v}]/infer. An inference goes through the same pieces as
/classify (routes.ClassifyCall: the same checks, decoding, batcher and result timeout), so its
answers equal /classify's and both kinds of request share batches. A version other than the
one served is a 404: a client that names one wants exactly it.

Each model takes one of two inputs per request:
- `image`, BYTES [N]: N encoded images (any format /classify takes). Raw with the binary tensor
  extension; in JSON each element is the image in base64, since a JSON string cannot carry
  arbitrary bytes (tritonclient refuses non-UTF-8 BYTES in JSON).
- `pixels`, FP32 [N, 3, S, S]: images already preprocessed as the domain's manifest says
  (model_store.preprocess_bytes), S the model's input size.
It answers `probabilities`, FP32 [N, classes] (softmax). Asked with `classification: k`, that
output is BYTES [N, k] of "score:index:label", best first: /classify's top-k (the
classification extension).

The infer route is a plain ASGI middleware (RawInfer), as the /classify fast path
(fastpath.py) is, for the same reason: as a route behind FastAPI's router and middleware stack
it did 0.69 of /classify's req/s (wrk, 32 clients, one image, 2-core AMD EPYC shared with other
work), as this middleware 0.93 (benchmarks/v2_bench.py; median of 5 alternating rounds).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from model_store import list_versions

from .deps import BatcherDep, ServedDep
from .errors import BadRequest, BatcherDown, UnknownVersion, UnsupportedMediaType, render
from .fastpath import read_body
from .middleware import V2_INFER
from .routes import TOP_K_DEFAULT, TOP_K_MAX, ClassifyCall
from .runner import encode
from .v2_schemas import (
    ModelMetadata,
    ModelReady,
    ProtocolError,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
)
from .v2_wire import (
    HEADER_LENGTH,
    InferRequest,
    OutputTensor,
    RequestedOutput,
    encode_response,
    header_length,
    parse_request,
)

IMAGE, PIXELS, PROBABILITIES = "image", "pixels", "probabilities"
EXTENSIONS = ["classification", "binary_tensor_data"]
_HEADER_LENGTH = HEADER_LENGTH.encode()
try:
    SERVER_VERSION = version("bap")
except PackageNotFoundError:  # run from a checkout that was never installed
    SERVER_VERSION = "unknown"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProtocolError} for code in (400, 404, 503)
}

router = APIRouter(tags=["Open Inference Protocol (v2)"])


def model_call(state: State, domain: str, version: str | None) -> ClassifyCall:
    """The call for this model (domain) and version; 404 for another version than the served."""
    call = ClassifyCall.checked(state, domain, TOP_K_DEFAULT)
    served = call.served.version
    if version is not None and version != served:
        stored = list_versions(call.settings.store, call.settings.model)
        held = "the store holds it" if version in stored else "the store has no such version"
        raise UnknownVersion(
            f"model {domain!r} version {version!r} is not served ({held}); this server serves "
            f"version {served!r}: ask for it or leave the version out"
        )
    return call


def _metadata(call: ClassifyCall) -> ModelMetadata:
    spec = call.served.manifest.spec
    side, classes = spec.input_size, len(spec.domains[call.served.index[call.domain]].labels)
    return ModelMetadata(
        name=call.domain,
        versions=[call.served.version],
        platform=f"bap_{call.served.runtime.name}",
        inputs=[
            TensorMetadata(name=IMAGE, datatype="BYTES", shape=[-1]),
            TensorMetadata(name=PIXELS, datatype="FP32", shape=[-1, 3, side, side]),
        ],
        outputs=[TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, classes])],
    )


def _ready(call: ClassifyCall) -> ModelReady:
    if (died := call.batcher.death()) is not None:
        raise BatcherDown(str(died))
    return ModelReady(name=call.domain, ready=True)


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """Who this server is and which protocol extensions it speaks."""
    return ServerMetadata(name="bap", version=SERVER_VERSION, extensions=EXTENSIONS)


@router.get("/v2/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    """The process is up (as /healthz)."""
    return ServerLive(live=True)


@router.get("/v2/health/ready", response_model=ServerReady, responses=ERRORS)
async def server_ready(served: ServedDep, batcher: BatcherDep) -> ServerReady:
    """Ready to infer (as /readyz): loaded, verified, warmed, batching, not draining."""
    if (died := batcher.death()) is not None:
        raise BatcherDown(str(died))
    return ServerReady(ready=True)


@router.get("/v2/models/{domain}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(request: Request, domain: str) -> ModelMetadata:
    """A domain's inputs and outputs, and the version served."""
    return _metadata(model_call(request.app.state, domain, None))


@router.get(
    "/v2/models/{domain}/versions/{version}", response_model=ModelMetadata, responses=ERRORS
)
async def model_version_metadata(request: Request, domain: str, version: str) -> ModelMetadata:
    """As /v2/models/{domain}, for the version served only (404 for any other)."""
    return _metadata(model_call(request.app.state, domain, version))


@router.get("/v2/models/{domain}/ready", response_model=ModelReady, responses=ERRORS)
async def model_ready(request: Request, domain: str) -> ModelReady:
    """The domain can be inferred now."""
    return _ready(model_call(request.app.state, domain, None))


@router.get(
    "/v2/models/{domain}/versions/{version}/ready", response_model=ModelReady, responses=ERRORS
)
async def model_version_ready(request: Request, domain: str, version: str) -> ModelReady:
    """As /v2/models/{domain}/ready, for the version served only (404 for any other)."""
    return _ready(model_call(request.app.state, domain, version))


async def _inputs(call: ClassifyCall, request: InferRequest) -> list[np.ndarray]:
    """The request's images as network inputs, decoded like /classify's (or as sent)."""
    side = call.served.manifest.spec.input_size
    expected = f"{IMAGE} (BYTES [N], encoded images) or {PIXELS} (FP32 [N, 3, {side}, {side}])"
    if len(request.inputs) != 1:
        raise BadRequest(f"send exactly one input: {expected}")
    [tensor] = request.inputs
    n, limit = (tensor.shape or (0,))[0], call.settings.max_queue
    if not 1 <= n <= limit:  # more than a queue holds could never be served
        raise BadRequest(f"input {tensor.name!r}: {n} images; send 1 to {limit} (max_queue)")
    if (tensor.name, tensor.datatype, len(tensor.shape)) == (IMAGE, "BYTES", 1):
        blobs = (
            list(tensor.values)
            if tensor.binary
            else [_base64(v, i) for i, v in enumerate(tensor.values)]
        )
        if n == 1:  # the same decode as /classify's single image (small ones on the event loop)
            return await call.decode([(None, blobs[0])], many=False)
        named = [(f"{IMAGE}[{i}]", blob) for i, blob in enumerate(blobs)]
        return await call.decode(named, many=True, part="{name}")
    if (tensor.name, tensor.datatype, tensor.shape[1:]) == (PIXELS, "FP32", (3, side, side)):
        pixels = np.asarray(tensor.values)
        if not np.isfinite(pixels).all():  # NaN would come back as NaN scores, not JSON
            raise BadRequest(f"input {PIXELS!r}: holds NaN or infinite values")
        return list(pixels)
    raise BadRequest(
        f"input {tensor.name!r} {tensor.datatype} {list(tensor.shape)}; this model takes {expected}"
    )


def _base64(value: Any, i: int) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"{IMAGE}[{i}]: not base64; in JSON an image is its bytes in base64, or send it raw "
            "with the binary tensor extension"
        ) from None


def _requested(request: InferRequest) -> list[RequestedOutput]:
    if not request.outputs:
        return [RequestedOutput(PROBABILITIES, request.binary_default, 0)]
    for out in request.outputs:
        if out.name != PROBABILITIES:
            raise BadRequest(f"unknown output {out.name!r}; this model has {PROBABILITIES!r}")
        if out.classification > TOP_K_MAX:
            raise BadRequest(f"classification {out.classification}: at most {TOP_K_MAX} classes")
    return request.outputs


def _tensor(call: ClassifyCall, out: RequestedOutput, probs: list[np.ndarray]) -> OutputTensor:
    if not out.classification:
        matrix = np.stack(probs)
        return OutputTensor(out.name, "FP32", matrix.shape, matrix, out.binary)
    rows = [encode(call.served, call.domain, p, out.classification) for p in probs]
    classes = [f"{p.score}:{p.index}:{p.label}" for row in rows for p in row]
    return OutputTensor(out.name, "BYTES", (len(rows), len(rows[0])), classes, out.binary)


async def infer(
    state: State, domain: str, version: str | None, scope: Scope, receive: Receive
) -> tuple[bytes, int | None]:
    """One inference request: its body in, the response body (and its JSON length) out."""
    call = model_call(state, domain, version)
    coding = length = None
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            coding = value.decode("latin-1").lower()
        elif name == _HEADER_LENGTH:
            length = header_length(value.decode("latin-1"))
    if coding not in (None, "identity"):
        raise UnsupportedMediaType(f"content encoding {coding!r}; send the body uncompressed")
    request = parse_request(await read_body(receive), length)
    outputs = _requested(request)
    xs = await _inputs(call, request)
    if len(xs) == 1:  # no task per image when there is one
        probs = [await call.scores(xs[0])]
    else:
        probs = await asyncio.gather(*(call.scores(x) for x in xs))
    tensors = [_tensor(call, out, probs) for out in outputs]
    return encode_response(call.domain, call.served.version, request.id, tensors)


class RawInfer:
    """Answers POST /v2/models/{domain}[/versions/{v}]/infer itself, beside the /classify fast
    path and inside the same body-limit and metrics middlewares; passes every other request on
    (GET on that path is then FastAPI's 404)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not path.startswith("/v2/")
            or scope["method"] != "POST"
            or (match := V2_INFER.fullmatch(path)) is None
        ):
            return await self.app(scope, receive, send)
        try:
            body, length = await infer(scope["app"].state, match[1], match[2], scope, receive)
        except Exception as exc:  # the app's one error mapping, in the protocol's form
            return await render(exc, "POST", path)(scope, receive, send)
        media = b"application/json" if length is None else b"application/octet-stream"
        headers = [(b"content-type", media), (b"content-length", b"%d" % len(body))]
        if length is not None:
            headers.append((_HEADER_LENGTH, b"%d" % length))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
