"""Server fixtures: a temp store holding a tiny random model, images, an in-process app."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from model_store import (
    DomainMetrics,
    Manifest,
    build_model,
    load_version,
    preprocess_bytes,
    prune_to_union,
    publish_version,
)
from server import Settings, create_app
from tests.conftest import randomize, tiny_spec

MODEL = "tiny"
TOKEN = "test-admin-token-0123456789"
DOMAINS = ("dom0", "dom1", "dom2")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def publish_random(store: Path, seed: int) -> str:
    """Publish a tiny pruned random model (different weights per seed) and make it CURRENT."""
    torch.manual_seed(seed)
    model = prune_to_union(randomize(build_model(tiny_spec()), 0.6, seed=seed))
    manifest = Manifest(
        name=MODEL,
        spec=model.spec,
        budget=0.5,
        budget_unit="macs",
        domains={d: DomainMetrics(0.9, 1000 + i, 5000 + i, 0.4) for i, d in enumerate(DOMAINS)},
        totals={
            "parameters": 1234.0,
            "single_domain_parameters": 2000.0,
            "baseline_macs": 9000.0,
            "independent_parameters": 6000.0,
        },
    )
    return publish_version(store, model, manifest).version


@pytest.fixture(scope="session")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Publishing costs ~0.5 s (build, prune, fsync): done once, copied per test."""
    root = tmp_path_factory.mktemp("store")
    publish_random(root, seed=0)
    return root


@pytest.fixture
def store(published_store: Path, tmp_path: Path) -> Path:
    """A store of our own holding v1 (CURRENT) of the tiny model."""
    return Path(shutil.copytree(published_store, tmp_path / "store"))


def settings_for(store: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"store": store, "model": MODEL, "admin_token": TOKEN}
    return Settings(**(values | overrides))


def image_bytes(seed: int, size: tuple[int, int] = (22, 19), fmt: str = "PNG") -> bytes:
    """A random RGB image, encoded; different seeds give different images."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, fmt)
    return out.getvalue()


class Reference:
    """What a stored version gives for one image alone (masked union path, batch of one)."""

    def __init__(self, store: Path, version: str | None = None):
        self.manifest, self.model = load_version(store, MODEL, version)

    def scores(self, domain: str, data: bytes) -> torch.Tensor:
        index = self.manifest.spec.domain_names.index(domain)
        x = preprocess_bytes(data, self.manifest.spec.domains[index].preprocess, 10**8)
        with torch.inference_mode():
            return self.model(torch.from_numpy(x)[None], index)[0].softmax(-1)


def assert_matches(body: dict[str, Any], reference: torch.Tensor) -> None:
    """The response's top-k are the reference's top-k, with the same scores."""
    k = len(body["predictions"])
    scores, indices = reference.topk(k)
    assert [p["index"] for p in body["predictions"]] == indices.tolist()
    got = torch.tensor([p["score"] for p in body["predictions"]])
    torch.testing.assert_close(got, scores, rtol=1e-4, atol=1e-5)


def metric(text: str, sample_name: str, /, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return sample.value
    return 0.0


class HeldBody:
    """A request body that is sent only when released, and says when the server starts reading
    it (the request has then passed routing and chosen its model version)."""

    def __init__(self, data: bytes):
        self.data, self.reading, self.release = data, asyncio.Event(), asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.reading.set()
        await self.release.wait()
        yield self.data


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (load, warm, batch) and give a client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@asynccontextmanager
async def serving(store: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings_for(store, **overrides))) as client:
        yield client
