"""A client nobody here wrote: tritonclient.http (the Open Inference Protocol's reference client)
calls `python -m server` over TCP on a free 127.0.0.1 port, on every v2 endpoint, with JSON and
binary tensors, BYTES and FP32 inputs and batches of mixed sizes; its answers must equal
POST /classify's for the same images.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model_store import Manifest, load_version, preprocess_bytes
from tests.server.conftest import DOMAINS, MODEL, image_bytes, metric
from tests.server.test_process import Server, server_process

pytestmark = pytest.mark.slow
PNG = {"content-type": "image/png"}
SIZES = (1, 3, 5, 2)  # images per request: batches of mixed sizes


@pytest.fixture(scope="module")
def server(published_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("v2")
    store = Path(shutil.copytree(published_store, tmp / "store"))
    with server_process(store, tmp, max_body_bytes=2**20, threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=4) as c:
        yield c


@pytest.fixture(scope="module")
def manifest(published_store: Path) -> Manifest:
    return load_version(published_store, MODEL)[0]


def classify(server: Server, domain: str, images: list[bytes]) -> list[list[dict[str, Any]]]:
    """POST /classify's predictions for each image, every class, best first."""
    with httpx.Client(base_url=server.url) as http:
        bodies = [
            http.post("/classify", params={"domain": domain, "top_k": 1000}, content=b, headers=PNG)
            for b in images
        ]
    assert all(r.status_code == 200 for r in bodies), [r.text for r in bodies]
    return [r.json()["predictions"] for r in bodies]


def as_vector(predictions: list[dict[str, Any]]) -> np.ndarray:
    scores = np.zeros(len(predictions), np.float32)
    for p in predictions:
        scores[p["index"]] = p["score"]
    return scores


def image_input(images: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    if binary:  # the raw bytes after the JSON header
        return tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    encoded = [base64.b64encode(b) for b in images]  # a JSON string cannot carry raw bytes
    return tensor.set_data_from_numpy(np.array(encoded, dtype=object), binary_data=False)


def pixel_input(
    manifest: Manifest, domain: str, images: list[bytes], binary: bool
) -> triton.InferInput:
    pre = manifest.spec.domains[manifest.spec.domain_names.index(domain)].preprocess
    pixels = np.stack([preprocess_bytes(b, pre, 10**8) for b in images])
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    return tensor.set_data_from_numpy(pixels, binary_data=binary)


def test_health_and_metadata(client: triton.InferenceServerClient, manifest: Manifest) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "bap"
    assert {"classification", "binary_tensor_data"} <= set(meta["extensions"])
    side = manifest.spec.input_size
    for i, domain in enumerate(DOMAINS):
        assert client.is_model_ready(domain)
        assert client.is_model_ready(domain, manifest.version)
        assert not client.is_model_ready(domain, "v999")
        model = client.get_model_metadata(domain)
        assert model == client.get_model_metadata(domain, manifest.version)
        assert model["versions"] == [manifest.version]
        assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in model["inputs"]} == {
            ("image", "BYTES", (-1,)),
            ("pixels", "FP32", (-1, 3, side, side)),
        }
        classes = len(manifest.spec.domains[i].labels)
        assert model["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]}
        ]
    assert not client.is_model_ready("nope")
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException) as other_version:
        client.get_model_metadata("dom0", "v999")
    assert (unknown.value.status(), other_version.value.status()) == ("404", "404")
    assert "known domains: dom0, dom1, dom2" in unknown.value.message()
    assert f"serves version {manifest.version!r}" in other_version.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("kind", ["image", "pixels"])
def test_infer_equals_classify(
    client: triton.InferenceServerClient,
    server: Server,
    manifest: Manifest,
    kind: str,
    binary: bool,
) -> None:
    """Requests of 1, 3, 5 and 2 images, in flight together (so they share batches), per domain:
    probabilities and top-3 classes equal /classify's for each image."""
    seed = 1000 * (kind == "pixels") + 100 * binary
    pending = []
    for d, domain in enumerate(DOMAINS):
        for s, size in enumerate(SIZES):
            images = [image_bytes(seed + 10 * (4 * d + s) + i) for i in range(size)]
            if kind == "image":
                tensor = image_input(images, binary)
            else:
                tensor = pixel_input(manifest, domain, images, binary)
            version = manifest.version if s % 2 else ""  # both paths
            probs = triton.InferRequestedOutput("probabilities", binary_data=binary)
            top = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
            asked = [client.async_infer(domain, [tensor], version, [out]) for out in (probs, top)]
            pending.append((domain, images, *asked))
    for domain, images, probs_call, top_call in pending:
        probs, top = probs_call.get_result(), top_call.get_result()
        expected = classify(server, domain, images)
        got = probs.as_numpy("probabilities")
        assert got.shape == (len(images), len(expected[0])) and got.dtype == np.float32
        np.testing.assert_allclose(got, [as_vector(p) for p in expected], rtol=1e-5, atol=1e-6)
        classes = top.as_numpy("probabilities")
        assert classes.shape == (len(images), 3)
        for row, predictions in zip(classes, expected, strict=True):
            # raw BYTES come back as bytes, JSON ones as str (tritonclient, as with Triton)
            parsed = [(c.decode() if isinstance(c, bytes) else c).split(":") for c in row]
            assert [(int(i), label) for _, i, label in parsed] == [
                (p["index"], p["label"]) for p in predictions[:3]
            ]
            np.testing.assert_allclose(
                [float(s) for s, _, _ in parsed], [p["score"] for p in predictions[:3]], rtol=1e-5
            )
        response = probs.get_response()
        assert (response["model_name"], response["model_version"]) == (domain, manifest.version)


def test_default_outputs_and_request_id(
    client: triton.InferenceServerClient, server: Server
) -> None:
    """No outputs named: tritonclient asks for every output as raw bytes."""
    images = [image_bytes(7), image_bytes(8)]
    result = client.infer("dom1", [image_input(images, True)], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    expected = [as_vector(p) for p in classify(server, "dom1", images)]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)


def infer_error(
    client: triton.InferenceServerClient, *args: Any, **kwargs: Any
) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(*args, **kwargs)
    return caught.value


def test_errors_as_the_protocol_says(
    client: triton.InferenceServerClient, server: Server, manifest: Manifest
) -> None:
    good = image_input([image_bytes(1)], True)
    before = httpx.get(server.url + "/metrics").text
    unknown = infer_error(client, "nope", [good])
    version = infer_error(client, "dom0", [good], model_version="v999")
    bad = infer_error(client, "dom0", [image_input([image_bytes(1), b"not an image"], True)])
    large = infer_error(client, "dom0", [image_input([b"\0" * 2**20], True)])
    wrong = triton.InferInput("pixels", [1, 3, 5, 5], "FP32")
    shape = infer_error(client, "dom0", [wrong.set_data_from_numpy(np.zeros((1, 3, 5, 5), "f4"))])
    output = infer_error(client, "dom0", [good], outputs=[triton.InferRequestedOutput("logits")])
    after = httpx.get(server.url + "/metrics").text
    assert unknown.status() == "404" and "unknown domain 'nope'" in unknown.message()
    assert version.status() == "404" and "'v999' is not served" in version.message()
    assert bad.status() == "400" and "image[1]: not a readable image" in bad.message()
    assert large.status() == "413" and "the limit is 1048576" in large.message()
    side = manifest.spec.input_size
    assert shape.status() == "400" and f"pixels (FP32 [N, 3, {side}, {side}])" in shape.message()
    assert output.status() == "400" and "unknown output 'logits'" in output.message()

    def delta(domain: str, code: str) -> float:
        return metric(after, "bap_requests_total", domain=domain, code=code) - metric(
            before, "bap_requests_total", domain=domain, code=code
        )

    assert delta("unknown", "404") == 1  # the unknown model, counted under no client label
    assert (delta("dom0", "404"), delta("dom0", "400"), delta("dom0", "413")) == (1, 3, 1)
