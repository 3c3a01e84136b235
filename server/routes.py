"""The HTTP surface: request in, response out. Handlers stay short and raise typed errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from starlette.datastructures import State, UploadFile

from model_store import ImageError, ImageTooLarge

from .batching import Batcher
from .config import Settings
from .deps import AdminDep, BatcherDep, HolderDep, ServedDep, current_served, running_batcher
from .errors import (
    BadParameters,
    BatcherDown,
    NotReady,
    ResultTimeout,
    UnknownDomain,
    UnsupportedMediaType,
)
from .runner import Served, decode, encode
from .schemas import (
    BatchItem,
    BatchResponse,
    ClassifyResponse,
    DomainInfo,
    DomainsResponse,
    ErrorBody,
    FiltersResponse,
    Prediction,
    Ready,
    Reloaded,
    Status,
)

# every format the decoder reads (model_store.ACCEPTED_FORMATS), and the common image/jpg alias
RAW_TYPES = (
    "image/jpeg",
    "image/jpg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/gif",
    "image/tiff",
    "application/octet-stream",
)
MULTIPART = "multipart/form-data"
# classify's parameters: the FastAPI route declares them, the fast path reads the same limits
DOMAIN_MAX_CHARS, TOP_K_DEFAULT, TOP_K_MAX = 64, 5, 1000
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422, 503)
}
_BINARY = {"type": "string", "format": "binary"}


def _form(file_schema: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"file": file_schema}, "required": ["file"]}
    return {MULTIPART: {"schema": schema}}


IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {**{t: {"schema": _BINARY} for t in RAW_TYPES}, **_form(_BINARY)},
    }
}
FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": _form(
            {
                "type": "array",
                "items": _BINARY,
                "minItems": 1,
                "description": "one `file` part per image, at most max_queue (BAP_MAX_QUEUE)",
            }
        ),
    }
}

router = APIRouter()
# Plain HTML + JS, no build step and no other host: read once, at import.
DEMO_PAGE = (Path(__file__).parent / "static" / "demo.html").read_text()
# A single image up to this size is decoded on the event loop (a 28 px PNG takes ~50 us; the
# hop to a worker thread cost more in py-spy profiles); larger ones go to the decode threads.
INLINE_DECODE_PIXELS = 128 * 128


@dataclass
class ClassifyCall:
    """One classify request: the version it uses, its checked domain, and how to answer it.
    Both ways in build one: the FastAPI route below and the raw-body fast path (fastpath.py)."""

    served: Served
    settings: Settings
    batcher: Batcher
    decode_slots: anyio.CapacityLimiter  # decode_concurrency, across requests
    domain: str
    top_k: int

    @classmethod
    def checked(cls, state: State, domain: str, top_k: int) -> ClassifyCall:
        """The call for the app's current version; 503 before it is warm, 404 for a domain the
        version does not have."""
        served = current_served(state)
        batcher = running_batcher(state)
        if domain not in served.index:
            known = ", ".join(served.index)
            raise UnknownDomain(f"unknown domain {domain!r}; known domains: {known}")
        return cls(served, state.settings, batcher, state.decode_slots, domain, top_k)

    async def decode(
        self,
        images: list[tuple[str | None, bytes]],
        many: bool,
        part: str = "file part {i} ({name})",
    ) -> list[np.ndarray]:
        """Every image decoded in order, off the event loop in one thread hop (one small image:
        on the loop); the first bad one stops the rest (nothing is decoded or run after it),
        named by `part` if many (the v2 API names tensor elements, not file parts)."""

        def decode_all() -> list[np.ndarray]:
            out = []
            for i, (filename, data) in enumerate(images):
                try:
                    out.append(decode(self.served, self.domain, data, self.settings.max_pixels))
                except ImageError as exc:  # keep the type (400 or 413)
                    if not many:
                        raise
                    raise type(exc)(f"{part.format(i=i, name=filename)}: {exc}") from exc
            return out

        limit = self.settings.max_pixels
        if not many and limit > INLINE_DECODE_PIXELS:
            try:  # a small image on the event loop: ~0.1 ms, less than the thread hop costs
                return [decode(self.served, self.domain, images[0][1], INLINE_DECODE_PIXELS)]
            except ImageTooLarge:
                pass  # only larger than the inline size (its header said so): decode in a thread
        return await anyio.to_thread.run_sync(decode_all, limiter=self.decode_slots)

    async def scores(self, x: np.ndarray) -> np.ndarray:
        """Wait for this image's own softmax vector from its batch; a lone image of a quick
        model runs at once on the event loop instead (Batcher.can_run_alone)."""
        if self.batcher.can_run_alone(self.served):
            await asyncio.sleep(0)  # requests that arrived with this one reach the queue first
            if self.batcher.can_run_alone(self.served):
                return self.batcher.run_alone(self.served, self.domain, x)
        try:
            async with asyncio.timeout(self.settings.result_timeout_s):
                return await self.batcher.submit(self.served, self.domain, x)
        except TimeoutError:
            raise ResultTimeout(
                f"no result within {self.settings.result_timeout_s} s (result_timeout_s)"
            ) from None

    async def predict(self, x: np.ndarray) -> list[Prediction]:
        """This image's top-k from its batch."""
        return encode(self.served, self.domain, await self.scores(x), self.top_k)

    async def classify(self, image: bytes) -> ClassifyResponse:
        """One raw image through decode, its batch and top-k."""
        [x] = await self.decode([(None, image)], many=False)
        predictions = await self.predict(x)
        return ClassifyResponse(
            domain=self.domain, model_version=self.served.version, predictions=predictions
        )


async def read_images(
    request: Request, settings: Settings, many: bool
) -> list[tuple[str | None, bytes]]:
    """The uploaded images: a raw body, or the `file` parts of a multipart form."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in RAW_TYPES and not many:
        return [(None, await request.body())]
    if media != MULTIPART:
        accepted = f"{MULTIPART} with `file` parts"
        if not many:
            accepted = f"{', '.join(RAW_TYPES)}, or {MULTIPART} with one `file` part"
        raise UnsupportedMediaType(f"content type {media or '(none)'!r}; send {accepted}")
    limit = settings.max_queue  # more parts than a queue holds could never be served
    async with request.form(max_files=limit, max_fields=limit) as form:
        parts = form.getlist("file")
        if not parts or not all(isinstance(p, UploadFile) for p in parts):
            raise BadParameters("send each image as a multipart file part named `file`")
        if not many and len(parts) != 1:
            raise BadParameters("send exactly one `file` part; /classify/batch takes several")
        return [(p.filename, await p.read()) for p in parts]  # type: ignore[union-attr]


async def classify_call(
    request: Request,
    domain: Annotated[
        str, Query(min_length=1, max_length=DOMAIN_MAX_CHARS, description="see /domains")
    ],
    top_k: Annotated[
        int, Query(ge=1, le=TOP_K_MAX, description="how many classes to return")
    ] = TOP_K_DEFAULT,
) -> ClassifyCall:
    return ClassifyCall.checked(request.app.state, domain, top_k)


Call = Annotated[ClassifyCall, Depends(classify_call)]


@router.post(
    "/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=IMAGE_BODY
)
async def classify(call: Call, request: Request) -> ClassifyResponse:
    """Classify one image (raw body or one multipart `file`) with one domain's head."""
    [(_, image)] = await read_images(request, call.settings, many=False)
    return await call.classify(image)


@router.post(
    "/classify/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=FORM_BODY
)
async def classify_batch(call: Call, request: Request) -> BatchResponse:
    """Classify several `file` parts of one domain; one result per part, in order."""

    async def one(filename: str | None, x: np.ndarray) -> BatchItem:
        return BatchItem(filename=filename, predictions=await call.predict(x))

    images = await read_images(request, call.settings, many=True)
    decoded = await call.decode(images, many=True)  # all of them, before any is queued
    results = await asyncio.gather(
        *(one(name, x) for (name, _), x in zip(images, decoded, strict=True))
    )
    return BatchResponse(domain=call.domain, model_version=call.served.version, results=results)


@router.get("/domains", response_model=DomainsResponse, responses={503: {"model": ErrorBody}})
async def domains(served: ServedDep) -> DomainsResponse:
    """Every domain with its labels and measured cost, and the model's budget and totals."""
    m = served.manifest
    measured = {p: r.accuracy for p, r in m.precisions.items()}
    infos = [
        DomainInfo(
            name=d.name,
            labels=list(d.labels),
            accuracy_int8=measured.get("int8", {}).get(d.name),
            accuracy_bf16=measured.get("bf16", {}).get(d.name),
            **vars(m.domains[d.name]),
        )
        for d in m.spec.domains
    ]
    return DomainsResponse(
        model=m.name,
        version=m.version,
        runtime=served.runtime.name,
        precision=served.runtime.precision,
        budget=m.budget,
        budget_unit=m.budget_unit,
        totals=m.totals,
        domains=infos,
    )


@router.get(
    "/domains/filters", response_model=FiltersResponse, responses={503: {"model": ErrorBody}}
)
async def domain_filters(served: ServedDep) -> FiltersResponse:
    """Which filters each domain uses in each gated conv, and which all share (the union is
    what pruning kept)."""
    return FiltersResponse(version=served.version, blocks=served.filters)


@router.get("/", include_in_schema=False)
async def demo_page() -> HTMLResponse:
    """A page for a person: classify an image, see a domain's cost and the filter map."""
    return HTMLResponse(DEMO_PAGE)


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """The process is up (says nothing about the model)."""
    return Status(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": ErrorBody}})
async def readyz(served: ServedDep, batcher: BatcherDep) -> Ready:
    """200 only once a version is loaded, verified and warmed, while the batcher runs, and
    until draining starts."""
    if (died := batcher.death()) is not None:
        raise BatcherDown(str(died))
    return Ready(
        status="ready",
        model=served.manifest.name,
        version=served.version,
        runtime=served.runtime.name,
        precision=served.runtime.precision,
    )


@router.post(
    "/admin/reload",
    response_model=Reloaded,
    dependencies=[AdminDep],
    responses={code: {"model": ErrorBody} for code in (401, 403, 409)},
)
async def reload(holder: HolderDep) -> Reloaded:
    """Load CURRENT again, verify and warm it, then swap; a bad version is refused (409).
    With --workers every worker reloads; the answer is the one that took the request."""
    try:
        previous, current = await holder.reload_everywhere()
    except TimeoutError:
        raise NotReady(
            "the supervisor passed this worker no reload in time (is the server draining?)"
        ) from None
    return Reloaded(
        status="reloaded", previous=previous.version if previous else None, version=current.version
    )
