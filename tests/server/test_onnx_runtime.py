"""The server on its compiled runtimes (ONNX Runtime, OpenVINO): the version's graphs answer like
the torch network."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from model_store import (
    ArtifactError,
    PrecisionRecord,
    derive_version,
    recompile_version,
    version_path,
)
from server import create_app
from server.batching import INLINE_MAX_S
from server.startup import load_model
from tests.server.conftest import (
    DOMAINS,
    Reference,
    assert_matches,
    image_bytes,
    metric,
    running,
    settings_for,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def compiled_store(store: Path) -> Path:
    """The tiny model with graphs: v2 (CURRENT), derived from v1 by `export-graphs`."""
    recompile_version(store, "tiny")
    return store


async def assert_concurrent_answers_match(
    client: httpx.AsyncClient, reference: Reference, domains: tuple[str, ...]
) -> None:
    """One image a domain in `domains`, all sent at once (so they batch): each answer's top-3
    is the reference's."""
    requests = list(enumerate(domains))
    answers = await asyncio.gather(
        *(client.post(f"/classify?domain={domain}&top_k=3", content=image_bytes(seed),
                      headers={"content-type": "image/png"})
          for seed, domain in requests)
    )  # fmt: skip
    for (seed, domain), r in zip(requests, answers, strict=True):
        assert r.status_code == 200, r.text
        assert_matches(r.json(), reference.scores(domain, image_bytes(seed)))


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
async def test_every_domain_and_a_mixed_batch_answer_like_torch(
    compiled_store: Path, runtime: str
) -> None:
    reference = Reference(compiled_store)
    # max_batch_size 1 runs each domain's own graph (or with domain_graphs union, the union
    # graph for one domain); mixed batches run view by view, or through the union graph
    one_at_a_time = ({"max_batch_size": 1}, {"max_batch_size": 1, "domain_graphs": "union"})
    mixed = {"batching": "mixed", "max_batch_delay_ms": 50}
    for overrides in (*one_at_a_time, mixed, {**mixed, "domain_graphs": "union"}):
        app = create_app(settings_for(compiled_store, runtime=runtime, **overrides))
        async with running(app) as client:
            ready = (await client.get("/readyz")).json()
            assert (ready["runtime"], ready["precision"]) == (runtime, "fp32")
            assert (await client.get("/domains")).json()["runtime"] == runtime
            # ONNX Runtime: one batch per core at once (its sessions run on 1 thread each)
            cores = len(os.sched_getaffinity(0))
            assert app.state.batcher.workers == (cores if runtime == "onnx" else 1)
            await assert_concurrent_answers_match(client, reference, DOMAINS * 8)


def test_auto_takes_the_graphs_when_the_version_has_them(compiled_store: Path) -> None:
    assert load_model(settings_for(compiled_store)).runtime.name == "onnx"
    assert load_model(settings_for(compiled_store, runtime="torch")).runtime.name == "torch"


def test_onnx_without_graphs_is_refused_with_the_fix(store: Path) -> None:
    with pytest.raises(SystemExit, match="export-graphs"):
        load_model(settings_for(store, runtime="onnx"))


# Blocks torch (an import of it raises ImportError), then serves through the whole app.
NO_TORCH_SERVER = """
import json, sys
sys.modules["torch"] = None
from starlette.testclient import TestClient
from server import create_app
from server.config import Settings

store, requests = sys.argv[1], json.loads(sys.argv[2])
with TestClient(create_app(Settings(store=store, model="tiny", runtime="onnx"))) as client:
    out = [
        client.post(f"/classify?domain={d}&top_k=3", content=bytes.fromhex(h),
                    headers={"content-type": "image/png"}).json()
        for d, h in requests
    ]
print(json.dumps({"answers": out, "torch_loaded": any(m.startswith("torch") for m in sys.modules
                                                     if sys.modules[m] is not None)}))
"""


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter at the repo root running `script` (which blocks what it must)."""
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)


def test_the_server_runs_without_torch(compiled_store: Path) -> None:
    reference = Reference(compiled_store)
    requests = [(domain, image_bytes(seed)) for seed, domain in enumerate(DOMAINS)]
    wire = json.dumps([(d, data.hex()) for d, data in requests])
    run = _run_script(NO_TORCH_SERVER, str(compiled_store), wire)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert not result["torch_loaded"]
    for (domain, data), body in zip(requests, result["answers"], strict=True):
        assert_matches(body, reference.scores(domain, data))


def test_without_torch_a_version_without_graphs_names_the_export(store: Path) -> None:
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from server.__main__ import main\n"
        f"main(['--store', {str(store)!r}, '--model', 'tiny'])"
    )
    run = _run_script(script)
    assert run.returncode != 0
    assert "has no compiled graphs and this install has no torch" in run.stderr
    assert "python -m model_store export-graphs v1" in run.stderr


def test_int8_needs_the_int8_graphs(compiled_store: Path) -> None:
    with pytest.raises(SystemExit, match="training quantize --version v2"):
        load_model(settings_for(compiled_store, precision="int8"))


def test_int8_needs_a_graph_runtime(store: Path) -> None:
    # a version without graphs: auto means torch, which has no int8
    with pytest.raises(SystemExit, match="int8 runs only as compiled graphs"):
        load_model(settings_for(store, precision="int8"))


# The operator's store commands in the torch-free install (the Docker image), torch blocked.
NO_TORCH_CLI = """
import sys
sys.modules["torch"] = None
from model_store.store.cli import main
store, volume = sys.argv[1], sys.argv[2]
for args in (["verify"], ["list"], ["set-current", "v2"], ["seed", "--from", store]):
    base = ["--store", volume if args[0] == "seed" else store, "--name", "tiny"]
    print("exit", main(base + args), flush=True)
print("torch loaded:", any(m.startswith("torch") for m in sys.modules if sys.modules[m]))
"""


def test_the_store_commands_run_without_torch(compiled_store: Path, tmp_path: Path) -> None:
    """verify, list, set-current and seed need no torch: verification then loads every graph in
    ONNX Runtime after the SHA-256 check, and still refuses a corrupt file."""
    run = _run_script(NO_TORCH_CLI, str(compiled_store), str(tmp_path / "volume"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("exit 0") == 4 and "torch loaded: False" in run.stdout
    assert "graphs load in ONNX Runtime (no torch here)" in run.stdout
    assert "seeded ['v1', 'v2']" in run.stdout
    graph = next((version_path(compiled_store, "tiny") / "graphs" / "domains").iterdir())
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    run = _run_script(NO_TORCH_CLI, str(compiled_store), str(tmp_path / "other"))
    assert "exit 1" in run.stdout and "SHA-256 does not match" in run.stderr


def test_onnx_runtime_runs_one_thread_batches_one_per_core(
    compiled_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default every session runs on 1 thread and the server runs a batch per core at once;
    BAP_THREADS gives each batch more threads and so fewer batches at once."""
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3})

    def threads_and_batches(**settings) -> tuple[set[int], int]:
        graphs = load_model(settings_for(compiled_store, runtime="onnx", **settings)).runtime
        sessions = [*graphs.domains.values(), *([graphs.mixed] if graphs.mixed else [])]
        assert not any(s.get_session_options().enable_cpu_mem_arena for s in sessions)
        threads = {s.get_session_options().intra_op_num_threads for s in sessions}
        return threads, graphs.parallel_batches

    assert threads_and_batches() == ({1}, 4)
    assert threads_and_batches(threads=2) == ({2}, 2)
    assert threads_and_batches(threads=3) == ({3}, 1)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0})
    assert threads_and_batches() == ({1}, 1)


@pytest.mark.parametrize(
    ("workers", "batches", "inline"),
    [(1, 4, False), (2, 2, False), (3, 1, True), (4, 1, True), (8, 1, False)],
)
async def test_workers_share_out_the_batches_the_cores_run(
    compiled_store: Path, monkeypatch: pytest.MonkeyPatch, workers: int, batches: int, inline: bool
) -> None:
    """With --workers each process runs its share of the cores' batches at once, never 0; a
    worker with a core of its own (one batch at a time, no more workers than cores) runs its
    quick batches on its event loop, answering the same as every other batch."""
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    app = create_app(settings_for(compiled_store, runtime="onnx", workers=workers))
    async with running(app) as client:
        assert metric((await client.get("/metrics")).text, "bap_inference_workers") == batches
        assert app.state.batcher.inline_max_s == (INLINE_MAX_S if inline else 0.0)
        reference = Reference(compiled_store)
        for _ in range(2):  # the version's first batch is measured; later ones may go inline
            await assert_concurrent_answers_match(client, reference, DOMAINS * 4)


async def test_bf16_is_served_once_measured_and_shows_its_accuracy(compiled_store: Path) -> None:
    with pytest.raises(SystemExit, match="measure-bf16 --version v2"):
        load_model(settings_for(compiled_store, runtime="openvino", precision="bf16"))

    def measured(domains: list[str]) -> dict[str, PrecisionRecord]:
        fp32, bf16 = {d: 0.9 for d in domains}, {d: 0.875 for d in domains}
        return {"bf16": PrecisionRecord("openvino test", "test", {}, fp32, bf16)}

    derive_version(compiled_store, "tiny", "v2", {}, measured(DOMAINS[:-1]))  # one unmeasured
    with pytest.raises(SystemExit, match=rf"bf16 accuracy for \['{DOMAINS[-1]}'\]"):
        load_model(settings_for(compiled_store, runtime="openvino", precision="bf16"))
    derive_version(compiled_store, "tiny", "v3", {}, measured(DOMAINS))
    app = create_app(settings_for(compiled_store, runtime="openvino", precision="bf16"))
    try:
        async with running(app) as client:
            info = (await client.get("/domains")).json()
            r = await client.post(
                f"/classify?domain={DOMAINS[0]}",
                content=image_bytes(0),
                headers={"content-type": "image/png"},
            )
    except ArtifactError as exc:  # a CPU without native bf16 refuses to serve it, by design
        pytest.skip(str(exc))
    assert (info["runtime"], info["precision"]) == ("openvino", "bf16")
    assert [d["accuracy_bf16"] for d in info["domains"]] == [0.875] * len(DOMAINS)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


@pytest.mark.parametrize(
    ("runtime", "precision", "message"),
    [
        ("onnx", "bf16", "precision bf16 runs with runtime openvino, not onnx"),
        ("torch", "bf16", "precision bf16 runs with runtime openvino, not torch"),
        ("openvino", "int8", "precision int8 runs with runtime onnx or auto, not openvino"),
    ],
)
def test_a_precision_without_its_runtime_is_refused(
    store: Path, runtime: str, precision: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        settings_for(store, runtime=runtime, precision=precision)


def test_openvino_not_installed_names_the_extra(compiled_store: Path) -> None:
    script = (
        "import sys; sys.modules['openvino'] = None\n"
        "from server.__main__ import main\n"
        f"main(['--store', {str(compiled_store)!r}, '--model', 'tiny', '--runtime', 'openvino'])"
    )
    run = _run_script(script)  # only OpenVINO is blocked here
    assert run.returncode != 0
    assert "OpenVINO is not installed" in run.stderr and "pip install .[openvino]" in run.stderr


async def test_torchvision_layouts_serve_reload_and_draw_their_filters(tmp_path: Path) -> None:
    """A ResNet-18 version served from its graphs, then a hot reload to a ResNet-50 version
    (two gated convs a block): each answers like its masked network, /domains and the filter
    map follow the architecture, and the metrics count the requests."""
    from model_store import DomainMetrics, Manifest, build_model, export_graphs, prune_to_union
    from model_store import publish_version as publish
    from tests.conftest import randomize, tiny_spec
    from tests.server.conftest import MODEL, TOKEN, metric, serving

    def version(arch: str, seed: int) -> None:
        model = prune_to_union(randomize(build_model(tiny_spec(arch=arch)), 0.6, seed=seed))
        metrics = {d: DomainMetrics(0.9, 100, 500, 0.5) for d in model.spec.domain_names}
        manifest = Manifest(MODEL, model.spec, 0.5, "macs", metrics, {"parameters": 1.0})
        publish(tmp_path, model, manifest, extra_files=export_graphs(model))

    version("resnet18", seed=1)
    async with serving(tmp_path, runtime="onnx") as client:
        for arch, gates in (("resnet18", 8), ("resnet50", 32)):
            if arch == "resnet50":
                version(arch, seed=2)
                headers = {"Authorization": f"Bearer {TOKEN}"}
                assert (await client.post("/admin/reload", headers=headers)).status_code == 200
            reference = Reference(tmp_path)
            assert reference.model.spec.arch == arch
            side = reference.manifest.spec.input_size
            for seed, domain in enumerate(DOMAINS):
                data = image_bytes(seed, size=(side + 3, side + 5))
                r = await client.post(
                    f"/classify?domain={domain}&top_k=3",
                    content=data,
                    headers={"content-type": "image/png"},
                )
                assert r.status_code == 200, r.text
                assert_matches(r.json(), reference.scores(domain, data))
            filters = (await client.get("/domains/filters")).json()["blocks"]
            assert len(filters) == gates == len(reference.model.gated_masks())
            text = (await client.get("/metrics")).text
            assert metric(text, "bap_requests_total", domain="dom0", code="200") >= 1
