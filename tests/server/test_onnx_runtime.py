"""The server on ONNX Runtime: the version's compiled graphs answer like the torch network."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_store import version_path
from model_store.graphs import add_graphs
from server import create_app
from server.__main__ import load_model
from tests.server.conftest import (
    DOMAINS,
    Reference,
    assert_matches,
    image_bytes,
    running,
    settings_for,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def compiled_store(store: Path) -> Path:
    add_graphs(version_path(store, "tiny"))
    return store


async def test_every_domain_and_a_mixed_batch_answer_like_torch(compiled_store: Path) -> None:
    reference = Reference(compiled_store)
    # max_batch_size 1 runs each domain's own graph; mixed batching then runs the mixed graph
    for overrides in ({"max_batch_size": 1}, {"batching": "mixed", "max_batch_delay_ms": 50}):
        app = create_app(settings_for(compiled_store, runtime="onnx", **overrides))
        async with running(app) as client:
            ready = (await client.get("/readyz")).json()
            assert ready["runtime"] == "onnx"
            assert (await client.get("/domains")).json()["runtime"] == "onnx"
            for seed, domain in enumerate(DOMAINS * 2):
                data = image_bytes(seed)
                r = await client.post(
                    f"/classify?domain={domain}&top_k=3",
                    content=data,
                    headers={"content-type": "image/png"},
                )
                assert r.status_code == 200, r.text
                assert_matches(r.json(), reference.scores(domain, data))


def test_auto_takes_the_graphs_when_the_version_has_them(compiled_store: Path) -> None:
    assert load_model(settings_for(compiled_store)).runtime == "onnx"
    assert load_model(settings_for(compiled_store, runtime="torch")).runtime == "torch"


def test_onnx_without_graphs_is_refused_with_the_fix(store: Path) -> None:
    with pytest.raises(SystemExit, match="export-graphs"):
        load_model(settings_for(store, runtime="onnx"))
