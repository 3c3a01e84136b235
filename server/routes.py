"""The HTTP surface: request in, response out. Handlers stay short and raise typed errors."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from torch import Tensor

from model_store import ImageError

from .batching import Batcher
from .config import Settings
from .deps import AdminDep, BatcherDep, HolderDep, ServedDep, SettingsDep
from .errors import BadParameters, UnknownDomain, UnsupportedMediaType
from .runner import Served, decode, encode
from .schemas import (
    BatchItem,
    BatchResponse,
    ClassifyResponse,
    DomainInfo,
    DomainsResponse,
    ErrorBody,
    Ready,
    Reloaded,
    Status,
)

RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "application/octet-stream")
MULTIPART = "multipart/form-data"
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
    "requestBody": {"required": True, "content": _form({"type": "array", "items": _BINARY})}
}
Domain = Annotated[str, Query(min_length=1, max_length=64, description="a name from /domains")]
TopK = Annotated[int, Query(ge=1, le=1000, description="how many classes to return")]

router = APIRouter()


def _check_domain(served: Served, domain: str) -> None:
    if domain not in served.index:
        known = ", ".join(served.index)
        raise UnknownDomain(f"unknown domain {domain!r}; known domains: {known}")


async def _read_images(
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
    async with request.form(max_files=settings.max_queue, max_fields=settings.max_queue) as form:
        parts = form.getlist("file")
        if not parts or not all(isinstance(p, UploadFile) for p in parts):
            raise BadParameters("send each image as a multipart file part named `file`")
        if not many and len(parts) != 1:
            raise BadParameters("send exactly one `file` part; /classify/batch takes several")
        return [(p.filename, await p.read()) for p in parts]  # type: ignore[union-attr]


async def _infer(
    served: Served, batcher: Batcher, settings: Settings, domain: str, data: bytes
) -> Tensor:
    """Decode off the event loop, then wait for this image's own result from its batch."""
    x = await anyio.to_thread.run_sync(decode, served, domain, data, settings.max_pixels)
    return await batcher.submit(served, domain, x)


@router.post(
    "/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=IMAGE_BODY
)
async def classify(
    request: Request,
    served: ServedDep,
    settings: SettingsDep,
    batcher: BatcherDep,
    domain: Domain,
    top_k: TopK = 5,
) -> ClassifyResponse:
    """Classify one image (raw body or one multipart `file`) with one domain's head."""
    _check_domain(served, domain)
    [(_, data)] = await _read_images(request, settings, many=False)
    probs = await _infer(served, batcher, settings, domain, data)
    predictions = encode(served, domain, probs, top_k)
    return ClassifyResponse(domain=domain, model_version=served.version, predictions=predictions)


@router.post(
    "/classify/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    openapi_extra=FORM_BODY,
)
async def classify_batch(
    request: Request,
    served: ServedDep,
    settings: SettingsDep,
    batcher: BatcherDep,
    domain: Domain,
    top_k: TopK = 5,
) -> BatchResponse:
    """Classify several `file` parts of one domain; one result per part, in order."""
    _check_domain(served, domain)
    images = await _read_images(request, settings, many=True)

    async def one(i: int, filename: str | None, data: bytes) -> BatchItem:
        try:
            probs = await _infer(served, batcher, settings, domain, data)
        except ImageError as exc:  # keep the type (400 or 413), say which part
            raise type(exc)(f"file part {i} ({filename}): {exc}") from exc
        return BatchItem(filename=filename, predictions=encode(served, domain, probs, top_k))

    results = await asyncio.gather(*(one(i, name, data) for i, (name, data) in enumerate(images)))
    return BatchResponse(domain=domain, model_version=served.version, results=list(results))


@router.get("/domains", response_model=DomainsResponse, responses={503: {"model": ErrorBody}})
async def domains(served: ServedDep) -> DomainsResponse:
    """Every domain with its labels and measured cost, and the model's budget and totals."""
    m = served.manifest
    infos = [
        DomainInfo(name=d.name, labels=list(d.labels), **vars(m.domains[d.name]))
        for d in m.spec.domains
    ]
    return DomainsResponse(
        model=m.name,
        version=m.version,
        budget=m.budget,
        budget_unit=m.budget_unit,
        totals=m.totals,
        domains=infos,
    )


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """The process is up (says nothing about the model)."""
    return Status(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": ErrorBody}})
async def readyz(served: ServedDep) -> Ready:
    """200 only once a version is loaded, verified and warmed, and until draining starts."""
    return Ready(status="ready", model=served.manifest.name, version=served.version)


@router.post(
    "/admin/reload",
    response_model=Reloaded,
    dependencies=[AdminDep],
    responses={code: {"model": ErrorBody} for code in (401, 403, 409)},
)
async def reload(holder: HolderDep) -> Reloaded:
    """Load CURRENT again, verify and warm it, then swap; a bad version is refused (409)."""
    previous, current = await holder.reload()
    return Reloaded(
        status="reloaded", previous=previous.version if previous else None, version=current.version
    )
