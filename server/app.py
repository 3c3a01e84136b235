"""create_app(settings): the lifespan (load, verify, warm, batch; drain on exit), routes, metrics.

Start-up: load CURRENT and warm every domain, start the batcher, and only then answer /readyz.
SIGHUP reloads like POST /admin/reload. Shutdown: uvicorn stops accepting connections and waits
for in-flight requests (their images are still batched); then the batcher runs whatever is left
and stops, and the inference threads exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import make_asgi_app
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import errors, routes, v2
from .batching import INLINE_MAX_S, Batcher
from .config import Settings
from .fastpath import RawClassify
from .holder import CandidateRefused, ModelHolder
from .metrics import Metrics
from .middleware import BodyLimit, RequestMetrics
from .runner import Served, load_served, predict

log = logging.getLogger(__name__)


class _Endpoint:
    """Serves an ASGI app at one exact path (a Mount would redirect /metrics to /metrics/)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@contextlib.contextmanager
def _reload_on_sighup(holder: ModelHolder) -> Iterator[None]:
    """SIGHUP -> holder.reload() on the event loop (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()

    async def reload() -> None:
        with contextlib.suppress(CandidateRefused):  # already logged and counted by the holder
            await holder.reload()

    def on_signal() -> None:
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_signal)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def _domains_in_schema(app: FastAPI, holder: ModelHolder) -> None:
    """/docs lists the served domains as every `domain` parameter's choices. They change when a
    reload serves another version, so the schema is rebuilt per request of /openapi.json (a few
    milliseconds, for a page people open by hand)."""
    build = app.openapi

    def openapi() -> dict:
        app.openapi_schema = None
        schema = build()
        if holder.current is not None:
            names = list(holder.current.manifest.spec.domain_names)
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "domain":
                        parameter["schema"] = {**parameter["schema"], "enum": names}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _core_of_its_own(settings: Settings, first: Served, workers: int) -> bool:
    """One of several --workers whose runtime runs one-thread batches, a batch per core (ONNX
    Runtime), and whose share is one batch at a time: its batches can run on its event loop
    (batching.INLINE_MAX_S). Not torch or OpenVINO, whose one batch spans the cores."""
    return (
        settings.workers > 1 and workers == 1 and first.runtime.parallel_batches >= settings.workers
    )


def create_app(
    settings: Settings | None = None,
    preloaded: Served | None = None,
    supervisor: int | None = None,
) -> FastAPI:
    """A ready-to-serve app; its lifespan loads CURRENT, or serves `preloaded` (the version
    the CLI already loaded, verified and warmed, so start-up reads the weights once).
    `supervisor`: the pid that started this app's process as one of --workers."""
    settings = settings or Settings()
    metrics = Metrics(shared=supervisor is not None)
    load = partial(load_served, settings)
    holder = ModelHolder(settings.store, settings.model, metrics, load, supervisor)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preloaded is not None:
            await holder.adopt(first := preloaded)
        else:
            _, first = await holder.reload()
        # as many inference threads as the first version's runtime runs batches at once, shared
        # out between the --workers processes; a later version keeps them (a torch one, under
        # `auto`, then runs that many at once too). 2 workers on 2 cores with 2 threads each:
        # p99 35-41 ms at 32 clients, against 22-23 ms with 1 each (and 1,680-1,860 against
        # 1,830-1,910 req/s): batches beyond the cores only took turns on them.
        workers = max(1, first.runtime.parallel_batches // settings.workers)
        metrics.inference_workers.set(workers)
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bap-inference")
        batcher = Batcher(
            predict,
            executor,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000,
            max_queue=settings.max_queue,
            policy=settings.batching,
            auto_domain_batch=settings.auto_domain_batch,
            observer=metrics,
            workers=workers,
            requests_in_flight=lambda: metrics.requests_in_flight,
            inline_max_s=INLINE_MAX_S if _core_of_its_own(settings, first, workers) else 0.0,
        )
        try:
            batcher.start()
            app.state.batcher = batcher
            app.state.decode_slots = anyio.CapacityLimiter(settings.decode_concurrency)
            log.info(
                "ready model=%s batching=%s parallel_batches=%d",
                settings.model,
                settings.batching,
                workers,
            )
            with _reload_on_sighup(holder):
                yield
        finally:
            app.state.batcher = None  # /readyz and new requests answer 503 from here on
            await batcher.close()
            executor.shutdown(wait=True)
            log.info("stopped")

    # FastAPIOffline serves Swagger UI and ReDoc from the fastapi-offline package's own copies:
    # FastAPI's default pages load them from a CDN, a blank page on an edge box offline.
    app = FastAPIOffline(
        title="BAP inference server",
        summary="One budget-pruned ResNet serving many image domains",
        description="Prometheus metrics: `GET /metrics`. The demo page: `GET /`. The `domain` "
        "parameter takes the domains of the version being served (listed below).",
        lifespan=lifespan,
    )
    _domains_in_schema(app, holder)
    app.state.settings, app.state.holder, app.state.batcher = settings, holder, None
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(v2.router)  # the Open Inference Protocol (KServe v2)
    app.router.routes.append(
        Route("/metrics", _Endpoint(make_asgi_app(metrics.exposition())), include_in_schema=False)
    )
    app.add_middleware(RawClassify)  # inside the two below: limited and counted like the rest
    app.add_middleware(v2.RawInfer)  # the same for the v2 infer route
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: sees every 413 too
    return app
