"""The compiled graphs give the masked unpruned network's outputs for every domain, batch size
and mixed batch, in ONNX Runtime and in OpenVINO (fp32: within 1e-4; OpenVINO bf16: within 5% of
the logits' range), and are verified like the weights."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from model_store import (
    ArtifactError,
    export_graphs,
    open_version,
    prune_to_union,
    publish_version,
    read_artifact,
)
from model_store.runtimes.layout import MIXED_KEY, domain_key
from model_store.runtimes.onnx_runtime import OnnxGraphs
from model_store.runtimes.openvino_runtime import OpenVinoGraphs
from tests.model_store.test_artifact import _manifest

TOLERANCE = 1e-4
BF16_TOLERANCE = 0.05  # of the largest logit: bf16 keeps 8 significant bits (0.4% per rounding,
# over 26 layers; the worst case here was 2.1% of it)
RUNTIMES = {
    "onnx fp32": lambda stored, graphs: OnnxGraphs(stored, 1, domain_graphs=graphs),
    "openvino fp32": lambda stored, graphs: OpenVinoGraphs(stored, 1, domain_graphs=graphs),
    "openvino bf16": lambda stored, graphs: OpenVinoGraphs(stored, 1, "bf16", graphs),
}


@pytest.fixture(params=[(r, g) for r in RUNTIMES for g in ("views", "union")])
def runtime(request: pytest.FixtureRequest, version):
    """Each compiled runtime on the version's graphs, with the tolerance it is held to; with
    views (mixed batches run view by view) and with the union graph alone."""
    _, folder, _ = version
    name, domain_graphs = request.param
    try:
        graphs = RUNTIMES[name](open_version(folder.parent.parent, "tiny"), domain_graphs)
    except ArtifactError as exc:  # a CPU without native bf16: the runtime refuses, by design
        pytest.skip(str(exc))
    return graphs, TOLERANCE if graphs.precision == "fp32" else BF16_TOLERANCE


def _close(got: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    scale = 1.0 if tolerance == TOLERANCE else float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, atol=tolerance * scale, rtol=0)


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory):
    from model_store import build_model
    from tests.conftest import randomize, tiny_spec

    masked = randomize(build_model(tiny_spec()), seed=3)
    store = tmp_path_factory.mktemp("store")
    pruned = prune_to_union(masked).eval()
    publish_version(store, pruned, _manifest(pruned), extra_files=export_graphs(pruned))
    stored = open_version(store, "tiny")
    return masked, stored.folder, stored.manifest


@pytest.mark.parametrize("batch", [1, 3, 8, 1])  # 1 again: a smaller batch after a larger one
def test_every_domain_graph_equals_the_masked_network(version, runtime, batch: int) -> None:
    masked, _, manifest = version
    graphs, tolerance = runtime
    x = torch.randn(batch, 3, 16, 16)
    for d, name in enumerate(manifest.spec.domain_names):
        with torch.no_grad():
            expected = masked(x, d).numpy()
        got = graphs.run_domain(name, x.numpy())
        assert got.shape == expected.shape
        _close(got, expected, tolerance)


def test_a_result_outlives_the_next_batch(version, runtime) -> None:
    """The server encodes a batch's results after the next batch has run: no shared buffers."""
    _, _, manifest = version
    graphs, _ = runtime
    name = manifest.spec.domain_names[0]
    first = graphs.run_domain(name, np.ones((2, 3, 16, 16), np.float32))
    kept = first.copy()
    graphs.run_domain(name, np.zeros((2, 3, 16, 16), np.float32))
    np.testing.assert_array_equal(first, kept)


def test_onnx_batches_run_at_once_each_get_their_own_outputs(version) -> None:
    """The server runs one batch per core at once on the same ONNX Runtime sessions (the other
    runtimes run one at a time): each thread's batch gives the masked network's outputs for its
    own images, on the domain and the mixed graphs alike."""
    masked, folder, manifest = version
    stored = open_version(folder.parent.parent, "tiny")
    views, union = (OnnxGraphs(stored, 1, domain_graphs=g) for g in ("views", "union"))
    names = manifest.spec.domain_names
    jobs = [(i % len(names), torch.randn(2 + i % 5, 3, 16, 16)) for i in range(24)]

    def run(job: tuple[int, torch.Tensor]) -> tuple[np.ndarray, list[np.ndarray]]:
        d, x = job
        order = np.full(len(x), d, dtype=np.int64)
        return views.run_domain(names[d], x.numpy()), union.run_mixed(order, x.numpy())

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, jobs))
    for (d, x), (own, mixed) in zip(jobs, results, strict=True):
        with torch.no_grad():
            expected = masked(x, d).numpy()
        _close(own, expected, TOLERANCE)
        _close(np.stack(mixed), expected, TOLERANCE)


@pytest.mark.parametrize("order", [[0, 1, 2, 1, 0], [2], [1, 1, 2, 0, 2, 2, 0]])
def test_mixed_graph_equals_the_masked_network_per_image(
    version, runtime, order: list[int]
) -> None:
    masked, _, _ = version
    graphs, tolerance = runtime
    x = torch.randn(len(order), 3, 16, 16)
    got = graphs.run_mixed(np.array(order, dtype=np.int64), x.numpy())
    for row, d in enumerate(order):
        with torch.no_grad():
            expected = masked(x[row : row + 1], d)[0].numpy()
        _close(got[row], expected, tolerance)


@pytest.mark.parametrize("key, graphs", [(MIXED_KEY, "union"), (domain_key("dom1"), "views")])
def test_graphs_are_verified_like_the_weights(
    version, tmp_path: Path, key: str, graphs: str
) -> None:
    """Every graph a runtime loads is checked on the bytes it loads (the union graph only where
    it is loaded; `verify` checks every listed file)."""
    import shutil

    _, folder, manifest = version
    assert {domain_key(n) for n in manifest.spec.domain_names} | {MIXED_KEY} <= set(manifest.files)
    copy = tmp_path / "tiny" / "v1"
    shutil.copytree(folder.parent, copy.parent)
    open_version(tmp_path, "tiny").verify()  # every listed file, graphs included
    graph = copy / key
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        OnnxGraphs(open_version(tmp_path, "tiny"), domain_graphs=graphs)
    with pytest.raises(ArtifactError, match="SHA-256"):
        open_version(tmp_path, "tiny").verify()


def test_a_version_without_graphs_says_how_to_export_them(tmp_path: Path) -> None:
    from model_store import build_model
    from tests.conftest import randomize, tiny_spec

    model = prune_to_union(randomize(build_model(tiny_spec()))).eval()
    publish_version(tmp_path, model, _manifest(model))
    with pytest.raises(ArtifactError, match="export-graphs"):
        OnnxGraphs(open_version(tmp_path, "tiny"))


def test_export_graphs_publishes_a_derived_version_with_fresh_graphs(tmp_path: Path) -> None:
    """`export-graphs`: a new version with the same weights, masks and extra files and new
    graphs; what was measured on the old graphs (int8 graphs and records) is not carried; the
    old version is untouched, and CURRENT moves to the new one since it named the source."""
    from model_store import PrecisionRecord, build_model, current_version, list_versions
    from model_store.store.cli import main
    from tests.conftest import randomize, tiny_spec

    model = prune_to_union(randomize(build_model(tiny_spec()), seed=4)).eval()
    manifest = _manifest(model)
    int8 = {"graphs/int8/mixed.onnx": b"old int8"}
    manifest.precisions["int8"] = PrecisionRecord("ort", "cpu", {}, {}, {})
    files = {**export_graphs(model), **int8, "notes.txt": b"kept"}
    publish_version(tmp_path, model, manifest, extra_files=files)
    old = tmp_path / "tiny" / "v1"
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}

    assert main(["--store", str(tmp_path), "--name", "tiny", "export-graphs"]) == 0
    assert list_versions(tmp_path, "tiny") == ["v1", "v2"]
    assert current_version(tmp_path, "tiny") == "v2"
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    new = open_version(tmp_path, "tiny", "v2")
    new.verify()
    assert new.read("notes.txt") == b"kept" and "graphs/int8/mixed.onnx" not in new.manifest.files
    assert not new.manifest.precisions and new.manifest.provenance["derived_from"] == "v1"
    assert new.manifest.domains == manifest.domains
    _, new_model = read_artifact(new.folder)
    for a, b in zip(model.state_dict().values(), new_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(3, 3, 16, 16)
    graphs = OnnxGraphs(new)
    with torch.no_grad():
        for d, name in enumerate(new.manifest.spec.domain_names):
            expected = model(x, d).numpy()
            np.testing.assert_allclose(graphs.run_domain(name, x.numpy()), expected, atol=TOLERANCE)


def test_a_domain_graph_has_no_mask_product_and_refuses_a_masked_network() -> None:
    """The graph of a domain's own view drops the mask multiply (every filter it holds is on);
    a network with a filter switched off would need it, so it is refused."""
    import onnx

    from model_store import build_model, domain_view
    from model_store.runtimes.graphs import domain_graph
    from tests.conftest import randomize, tiny_spec

    masked = randomize(build_model(tiny_spec()), 0.5, seed=6).eval()
    graph = onnx.load_from_string(domain_graph(domain_view(masked, 0)))
    assert "Mul" not in {node.op_type for node in graph.graph.node}
    one_domain = domain_view(masked, 0)
    one_domain.blocks[0].masks[0, 0] = 0.0
    with pytest.raises(ValueError, match="every filter on"):
        domain_graph(one_domain)


@pytest.mark.parametrize("policy", ["union", "views"])
def test_a_domain_without_its_own_view_runs_through_the_union_graph(version, policy: str) -> None:
    """`domain_graphs`: views hold each domain's sliced copy of the weights; a domain served
    through the union graph instead answers the same (within 1e-4), with no view loaded."""
    masked, folder, manifest = version
    stored = open_version(folder.parent.parent, "tiny")
    expected = {"union": [], "views": ["dom0", "dom1", "dom2"]}[policy]
    graphs = OnnxGraphs(stored, threads=1, domain_graphs=policy)
    assert sorted(graphs.domains) == expected
    assert (graphs.mixed is None) == (policy == "views")  # views: no union graph loaded
    x = torch.randn(3, 3, 16, 16)
    for d, name in enumerate(manifest.spec.domain_names):
        with torch.no_grad():
            _close(graphs.run_domain(name, x.numpy()), masked(x, d).numpy(), TOLERANCE)


def test_a_session_keeps_no_copy_of_the_graph_bytes_it_was_made_from(version) -> None:
    """ONNX Runtime's wrapper would hold every graph's bytes for good beside the session's own
    weights (twice the weights in memory); make_session drops them and the session still runs."""
    from model_store import make_session

    masked, folder, manifest = version
    data = (folder / domain_key("dom0")).read_bytes()
    session = make_session(data, 1)
    assert all(held is not data for held in vars(session).values())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        _close(session.run(None, {"x": x.numpy()})[0], masked(x, 0).numpy(), TOLERANCE)
