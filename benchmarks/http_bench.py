"""Our server against a plain FastAPI app and a body-only route, one wrk client, one run.

Each app runs alone on the box and serves the same stored model's domain (the bundled model's
fashion by default): our `python -m server` as shipped (compiled graphs when the version has
them, batching), then with each opt-in runtime this install and version can run (int8 graphs in
ONNX Runtime, OpenVINO fp32 and bf16), `benchmarks.plain_app` (one torch forward of the same
pruned view per request in FastAPI's threadpool), and that app's route that only reads the body.
wrk posts one Fashion-MNIST test image as a raw image/png body at each client count, after a
warm-up. The server's own hooks, in-process at batch 1, give what decode + forward cost without
HTTP.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from model_store import ArtifactError, open_version
from server.runner import load_runtime

from .common import process_memory
from .inprocess import InProcess
from .process import Server, serve, serve_plain
from .workloads import png_bytes
from .wrk import run_wrk

log = logging.getLogger(__name__)
OURS, PLAIN, BODY = "ours", "plain FastAPI", "body only"
# the opt-in runtimes, each measured when this install and the version can run it
VARIANTS = {
    "ours, int8": {"precision": "int8"},
    "ours, OpenVINO fp32": {"runtime": "openvino"},
    "ours, OpenVINO bf16": {"runtime": "openvino", "precision": "bf16"},
}


@dataclass(frozen=True)
class Settings:
    store: Path
    model: str
    domain: str
    clients: tuple[int, ...] = (1, 32)
    seconds: float = 10.0
    warmup_s: float = 2.0
    inprocess_seconds: float = 2.0
    max_batch: int = 16  # the server's default BAP_MAX_BATCH_SIZE: the ceiling's batch


def fashion_png() -> tuple[bytes, str]:
    """The first Fashion-MNIST test image as a 28 px grey PNG (a random one if not installed)."""
    from training.sources.idx import read_idx  # the benchmark's data, not the server's
    from training.sources.packaged import FASHION_ROOT

    path = FASHION_ROOT / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        return png_bytes(28, 0), "random 28 px RGB PNG (Fashion-MNIST not installed)"
    out = io.BytesIO()
    Image.fromarray(read_idx(path)[0], "L").save(out, "PNG")
    return out.getvalue(), "Fashion-MNIST test image 0, 28 px grey PNG"


def _sweep(app: str, url: str, image: bytes, s: Settings) -> list[dict[str, Any]]:
    rows = []
    for clients in s.clients:
        if s.warmup_s:
            run_wrk(url, image, "image/png", clients, s.warmup_s)
        row = {"app": app} | run_wrk(url, image, "image/png", clients, s.seconds)
        log.info("%s", row)
        rows.append(row)
    return rows


def _unavailable(store: Path, model: str, settings: dict[str, str]) -> str | None:
    """Why the server cannot run CURRENT with these settings here (None: it can): no int8
    graphs, no OpenVINO installed, no bf16 record or no native bf16 on this CPU."""
    runtime, precision = settings.get("runtime", "auto"), settings.get("precision", "fp32")
    try:
        load_runtime(open_version(store, model), runtime, 1, precision)
    except ArtifactError as exc:
        return str(exc)
    return None


def _runtime(server: Server) -> str:
    return httpx.get(server.url + "/readyz", timeout=10).json()["runtime"]


def measure(s: Settings) -> dict[str, Any]:
    image, image_note = fashion_png()
    rows: list[dict[str, Any]] = []
    skipped = {}
    with tempfile.TemporaryDirectory() as tmp:
        with serve(s.store, s.model, Path(tmp)) as ours:
            runtime = _runtime(ours)
            rows += _sweep(OURS, f"{ours.url}/classify?domain={s.domain}", image, s)
            memory = process_memory(ours.pid)
        for label, settings in VARIANTS.items():
            if (why := _unavailable(s.store, s.model, settings)) is not None:
                log.info("%s not measured: %s", label, why)
                skipped[label] = why
                continue
            with serve(s.store, s.model, Path(tmp), **settings) as variant:
                rows += _sweep(label, f"{variant.url}/classify?domain={s.domain}", image, s)
        with serve_plain(s.store, s.model, s.domain, Path(tmp)) as plain:
            rows += _sweep(PLAIN, f"{plain.url}/classify", image, s)
            rows += _sweep(BODY, f"{plain.url}/body", image, s)
    one = InProcess(s.store, s.model).throughput([s.domain], False, image, s.inprocess_seconds)
    measured = {label: VARIANTS[label] for label in VARIANTS if label not in skipped}
    ceilings = {label: _ceiling(s, image, **settings) for label, settings in measured.items()}
    return {
        "rows": rows,
        "image": image_note,
        "image_bytes": len(image),
        "runtime": runtime,
        "skipped": skipped,
        "server_memory": memory,
        "inprocess_batch1_ms": 1e3 / one["images_per_s"],
        "inprocess_ceiling": _ceiling(s, image),
        "variant_ceilings": ceilings,
    }


def _ceiling(s: Settings, image: bytes, **settings: str) -> dict[str, float]:
    """In-process decode + forward at the server's max batch on every core (no event loop to
    share them with): what no server with these settings can beat."""
    every_core = InProcess(s.store, s.model, threads=len(os.sched_getaffinity(0)), **settings)
    return every_core.throughput([s.domain] * s.max_batch, False, image, s.inprocess_seconds)
