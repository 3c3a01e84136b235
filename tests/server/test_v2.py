"""The Open Inference Protocol in-process: the same batches as /classify, and a catalogue of
requests the protocol does not allow, each with the status it must get and the protocol's error
body `{"error": "..."}` (tritonclient's view of the same server is test_v2_tritonclient.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import png_header
from tests.server.conftest import image_bytes, metric, serving

pytestmark = pytest.mark.anyio
INFER = "/v2/models/dom0/infer"
PNG = image_bytes(3)
SIDE = 16  # the tiny spec's input size


def image_json(*images: bytes) -> dict[str, Any]:
    data = [base64.b64encode(b).decode() for b in images]
    return {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": data}]
    }


def binary(header: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """httpx request arguments for a JSON header followed by raw tensor bytes."""
    head = json.dumps(header).encode()
    return {
        "content": head + raw,
        "headers": {"inference-header-content-length": str(len(head))},
    }


def raw_image_input(size: int) -> dict[str, Any]:
    return {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": size},
    }


def pixels(values: list[float], shape: list[int]) -> dict[str, Any]:
    return {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": shape, "data": values}]}


ZEROS = [0.0] * (3 * SIDE * SIDE)
NAN = struct.pack(f"<{len(ZEROS)}f", float("nan"), *ZEROS[1:])
RAW_PIXELS = {
    "name": "pixels",
    "datatype": "FP32",
    "shape": [1, 3, SIDE, SIDE],
    "parameters": {"binary_data_size": len(NAN)},
}
BYTES_PNG = struct.pack("<I", len(PNG)) + PNG

# name: (request kwargs, settings overrides, status, words of the message)
CATALOGUE: dict[str, tuple[dict[str, Any], dict[str, Any], int, str]] = {
    "not JSON": ({"content": b"{nope"}, {}, 400, "not JSON"),
    "JSON not an object": ({"json": [1]}, {}, 400, "must be a JSON object"),
    "no inputs": ({"json": {"inputs": []}}, {}, 400, "inputs must be a non-empty list"),
    "header longer than body": (
        {"content": b"{}", "headers": {"inference-header-content-length": "9"}},
        {},
        400,
        "body holds 2 bytes",
    ),
    "header length not a number": (
        {"content": b"{}", "headers": {"inference-header-content-length": "-1"}},
        {},
        400,
        "must be a byte count",
    ),
    "raw bytes left over": (
        binary({"inputs": [raw_image_input(len(BYTES_PNG))]}, BYTES_PNG + b"xx"),
        {},
        400,
        "2 bytes after the inputs",
    ),
    "binary size past the body": (
        binary({"inputs": [raw_image_input(len(BYTES_PNG) + 1)]}, BYTES_PNG),
        {},
        400,
        f"binary_data_size {len(BYTES_PNG) + 1} with {len(BYTES_PNG)} raw bytes left",
    ),
    "BYTES element cut short": (
        binary({"inputs": [raw_image_input(len(BYTES_PNG) - 1)]}, BYTES_PNG[:-1]),
        {},
        400,
        "element is cut short",
    ),
    "unknown datatype": (
        {"json": {"inputs": [{"name": "image", "datatype": "INT8", "shape": [1], "data": [1]}]}},
        {},
        400,
        "this server takes BYTES or FP32",
    ),
    "negative shape": (
        {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1], "data": []}]}},
        {},
        400,
        "non-negative integers",
    ),
    "data count off the shape": (
        {"json": pixels(ZEROS, [2, 3, SIDE, SIDE])},
        {},
        400,
        "768 values for shape [2, 3, 16, 16]",
    ),
    "unknown input": (
        {"json": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}},
        {},
        400,
        "this model takes image (BYTES [N], encoded images) or pixels",
    ),
    "two inputs": (
        {"json": {"inputs": image_json(PNG)["inputs"] * 2}},
        {},
        400,
        "send exactly one input",
    ),
    "more images than a queue holds": (
        {"json": image_json(PNG, PNG, PNG)},
        {"max_queue": 2},
        400,
        "3 images; send 1 to 2 (max_queue)",
    ),
    "no images": (
        {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]}},
        {},
        400,
        "0 images",
    ),
    "image not base64 in JSON": (
        {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["?"]}]}},
        {},
        400,
        "image[0]: not base64",
    ),
    "not an image": ({"json": image_json(b"GIF89a nope")}, {}, 400, "not a readable image"),
    "second image bad": ({"json": image_json(PNG, b"nope")}, {}, 400, "image[1]: not a readable"),
    "pixel bomb": (
        {"json": image_json(png_header(50_000, 50_000))},
        {},
        413,
        "the limit is 40000000",
    ),
    "NaN pixels": (binary({"inputs": [RAW_PIXELS]}, NAN), {}, 400, "NaN or infinite"),
    "pixels at another size": (
        {"json": pixels([0.0] * 12, [1, 3, 2, 2])},
        {},
        400,
        "FP32 [1, 3, 2, 2]; this model takes",
    ),
    "unknown output": (
        {"json": image_json(PNG) | {"outputs": [{"name": "logits"}]}},
        {},
        400,
        "unknown output 'logits'",
    ),
    "output twice": (
        {"json": image_json(PNG) | {"outputs": [{"name": "probabilities"}] * 2}},
        {},
        400,
        "requested twice",
    ),
    "classification not a count": (
        {
            "json": image_json(PNG)
            | {"outputs": [{"name": "probabilities", "parameters": {"classification": "3"}}]}
        },
        {},
        400,
        "classification must be a class count",
    ),
    "compressed body": (
        {"content": b"\x1f\x8b", "headers": {"content-encoding": "gzip"}},
        {},
        415,
        "send the body uncompressed",
    ),
    "body over the limit": ({"content": b"0" * 2048}, {"max_body_bytes": 1024}, 413, "limit is"),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
async def test_refused_with_the_protocols_error(store: Path, case: str) -> None:
    kwargs, overrides, status, words = CATALOGUE[case]
    async with serving(store, **overrides) as client:
        r = await client.post(INFER, **kwargs)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and words in r.json()["error"]


async def test_other_paths_answer_in_the_protocols_form(store: Path) -> None:
    async with serving(store) as client:
        missing = await client.get("/v2/models/dom0/config")
        method = await client.get(INFER)
        version = await client.post("/v2/models/dom0/versions/v7/infer", json=image_json(PNG))
        classify = await client.post("/classify", params={"domain": "x"}, content=PNG)
    assert (missing.status_code, method.status_code, version.status_code) == (404, 404, 404)
    assert missing.json() == {"error": "Not Found"}
    assert version.json() == {
        "error": "model 'dom0' version 'v7' is not served (the store has no such version); "
        "this server serves version 'v1': ask for it or leave the version out"
    }
    assert classify.json()["error"] == "unknown_domain"  # /classify keeps its own form


async def test_full_queue_answers_503_with_retry_after(store: Path) -> None:
    async with serving(
        store, batching="mixed", max_batch_size=2, max_queue=1, max_batch_delay_ms=10_000
    ) as client:
        first = asyncio.ensure_future(client.post(INFER, json=image_json(PNG)))
        while metric((await client.get("/metrics")).text, "bap_queue_depth", domain="dom0") < 1:
            await asyncio.sleep(0.01)  # wait until the first image is queued
        refused = await client.post(INFER, json=image_json(PNG))
        other = await client.post("/v2/models/dom1/infer", json=image_json(PNG))
        assert (await first).status_code == 200  # dom1 filled the mixed batch, so both ran
    assert other.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "the queue for domain 'dom0' is full" in refused.json()["error"]


async def test_v2_and_classify_share_batches(store: Path) -> None:
    """Three images of one infer request and one /classify image close one batch of four."""
    async with serving(
        store, batching="per-domain", max_batch_size=4, max_batch_delay_ms=10_000
    ) as client:
        infer, classify = await asyncio.gather(
            client.post(INFER, json=image_json(image_bytes(1), image_bytes(2), image_bytes(3))),
            client.post(
                "/classify",
                params={"domain": "dom0", "top_k": 3},
                content=image_bytes(1),
                headers={"content-type": "image/png"},
            ),
        )
        metrics = (await client.get("/metrics")).text
    assert infer.status_code == classify.status_code == 200
    assert metric(metrics, "bap_batch_size_count", domain="dom0") == 1
    assert metric(metrics, "bap_batch_size_sum", domain="dom0") == 4
    first = infer.json()["outputs"][0]["data"][:3]
    assert [p["score"] for p in classify.json()["predictions"]] == sorted(first, reverse=True)
    assert metric(metrics, "bap_requests_total", domain="dom0", code="200") == 2
