"""Every benchmark suite runs end to end at --quick settings and writes valid JSON and the doc.

No timing is asserted: only that each suite ran, recorded where and how, and produced figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import http_bench, peer_envs, peers_bench
from benchmarks.__main__ import main
from benchmarks.server_bench import SWEEPS
from benchmarks.wrk import parse

SECTIONS = {
    "model": "## Model level",
    "server": "## Server level",
    "memory": "## Memory",
    "http": "## HTTP",
    "resnet50": "## ResNet-50 at 224 px",
    "peers": "## Servers a user would pick instead",
    "peers_resnet50": "## ResNet-50 at 224 px, 2 domains: our pruned server vs the peers",
}


def run_suite(suite: str, tmp_path: Path, *flags: str) -> tuple[dict[str, dict], str]:
    out, doc = tmp_path / "results", tmp_path / "benchmarks.md"
    main([suite, "--quick", "--out", str(out), "--doc", str(doc), *flags])
    results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    for name, data in results.items():
        assert data["suite"] == name
        assert {"cpu", "cores", "torch", "torch_threads", "commit", "load_average"} <= set(
            data["machine"]
        )
        assert data["settings"] and data["figures"]
    text = doc.read_text()
    assert all(SECTIONS[name] in text for name in results)
    assert "## Targets" in text
    return results, text


def test_model_suite(tmp_path: Path) -> None:
    results, _ = run_suite("model", tmp_path)
    assert set(results) == {"model"}
    rows = results["model"]["figures"]["rows"]
    strategies = {r["strategy"] for r in rows}
    assert {
        "full",
        "all filters + mask",
        "union + mask",
        "own filters",
        "mixed batch",
        "full, ONNX Runtime",
        "own filters, ONNX Runtime",
    } <= strategies
    assert all(r["ms"] > 0 and r["macs_ratio"] >= 1 for r in rows)


@pytest.mark.slow
def test_server_suite(tmp_path: Path) -> None:
    results, _ = run_suite("server", tmp_path)
    points = results["server"]["figures"]["points"]
    assert {p["server"] for p in points} == {*SWEEPS, "per-domain", "mixed"}
    assert all(not p["errors"] and p["ok"] > 0 for p in points)
    assert any("http_over_inprocess" in p for p in points)


@pytest.mark.slow
def test_memory_suite(tmp_path: Path) -> None:
    results, _ = run_suite("memory", tmp_path)
    figures = results["memory"]["figures"]
    assert len(figures["single_servers"]) == figures["domains"]
    assert figures["one_server"]["rss"] > 0


@pytest.mark.slow
def test_http_suite(tmp_path: Path) -> None:
    """Our server (ONNX Runtime fp32 and int8, OpenVINO fp32 and bf16), the plain FastAPI app
    and the body-only route each answered wrk without an error, and the ratios the targets table
    quotes were computed."""
    results, text = run_suite("http", tmp_path)
    figures = results["http"]["figures"]
    rows = figures["rows"]
    # the bundled model has int8 graphs and a bf16 record; only a CPU without bf16 skips one
    assert set(figures["skipped"]) <= {"ours, OpenVINO bf16"}, figures["skipped"]
    measured = [app for app in http_bench.VARIANTS if app not in figures["skipped"]]
    assert {(r["app"], r["clients"]) for r in rows} == {
        (app, c) for app in ("ours", *measured, "plain FastAPI", "body only") for c in (1, 2)
    }
    assert all(r["req_per_s"] > 0 and r["non_2xx"] == 0 and not r["socket_errors"] for r in rows)
    assert results["http"]["figures"]["runtime"] == "onnx"  # the bundled model has its graphs
    assert "ours ÷ plain FastAPI" in text and "in-process decode + forward" in text
    assert "ours, int8 (opt-in) ÷ body-only" in text and "Ceiling: in-process" in text
    # each opt-in runtime's own in-process ceiling, the bound its server row is read against
    assert set(figures["variant_ceilings"]) == set(measured)
    assert all(c["images_per_s"] > 0 for c in figures["variant_ceilings"].values())
    assert "(bound) in-process decode + forward, int8, ÷ body-only route" in text


def test_wrk_report_is_parsed() -> None:
    out = """Running 1s test @ http://127.0.0.1:1/x
  Latency Distribution
     50%  812.00us
     75%    1.02ms
     90%    1.50ms
     99%    2.10s
  1234 requests in 1.00s, 200.00KB read
  Non-2xx or 3xx responses: 3
Requests/sec:   1234.56
"""
    got = parse(out)
    assert got == {
        "req_per_s": 1234.56,
        "p50_ms": 0.812,
        "p90_ms": 1.5,
        "p99_ms": 2100.0,
        "non_2xx": 3,
        "socket_errors": 0,
    }


def test_resnet50_suite(tmp_path: Path) -> None:
    results, text = run_suite("resnet50", tmp_path)
    f = results["resnet50"]["figures"]
    assert {g["batch"] for g in f["graph_speed"]} == {1} and f["ours"]["ok"] > 0
    assert not f["ours"]["errors"] and not f["singles"]["errors"]
    assert f["rss_ratio"] > 0 and "ResNet-50 at 224 px" in text


def test_peers_suite_runs_the_plain_app_and_skips_what_is_not_installed(tmp_path: Path) -> None:
    """With an empty peers cache and --no-install nothing is downloaded: the plain FastAPI app
    (the project's own packages) answers our top-5 and is timed, and it serves
    the ResNet-50 run's unpruned graphs; every other peer is skipped with the reason, and the
    tables and targets name what was measured."""
    cache = tmp_path / "peers-cache"
    results, text = run_suite("peers", tmp_path, "--no-install", "--peers-cache", str(cache))
    f = results["peers"]["figures"]
    assert set(f["summary"]) == {"ours", peers_bench.OURS_X2, peers_bench.PLAIN}
    assert f["summary"][peers_bench.OURS_X2]["processes"] >= 3  # supervisor and 2 workers
    assert set(f["skipped"]) == set(peers_bench.PEERS) - {peers_bench.PLAIN, peers_bench.PLAIN_X2}
    assert all("not installed" in why for why in f["skipped"].values())
    assert not cache.exists()  # nothing was made
    assert {(r["server"], r["clients"]) for r in f["rows"]} == {
        (name, c) for name in f["summary"] for c in (1, 2)
    }
    assert all(r["non_2xx"] == 0 and not r["socket_errors"] for r in f["rows"])
    assert len(f["reference"]) == 5
    assert all(f["summary"][n]["pss_mib"] > 0 for n in f["summary"])
    assert f"ours ÷ {peers_bench.PLAIN}, req/s at 1 client" in text
    assert f"{peers_bench.OURS_X2} ÷ {peers_bench.PLAIN}, req/s at 2 clients" in text
    assert "Not measured: LitServe: not installed" in text
    r50 = results["peers_resnet50"]["figures"]  # the plain app serving one graph per domain
    assert set(r50["servers"]) == {"ours", peers_bench.PLAIN}
    assert set(r50["skipped"]) == {"Triton (PyTriton)"}
    assert all(r["errors"] == 0 and r["req_per_s"] > 0 for r in r50["servers"].values())
    assert f"ours (pruned) ÷ {peers_bench.PLAIN} (4 unpruned), req/s" in text


def test_a_peer_answering_unlike_ours_is_not_timed() -> None:
    ours = [("Ankle boot", 0.99), ("Sandal", 0.01)]
    peers_bench.check_answer("x", ours, ours)
    with pytest.raises(peers_bench.ServerFailed, match="not timed"):
        peers_bench.check_answer("x", [("Sandal", 0.99), ("Ankle boot", 0.01)], ours)
    with pytest.raises(peers_bench.ServerFailed, match="not timed"):
        peers_bench.check_answer("x", [("Ankle boot", 0.98), ("Sandal", 0.01)], ours)


def test_a_peer_environment_is_used_only_when_its_stamp_lists_exactly_its_pins(
    tmp_path: Path,
) -> None:
    """No pip here: a made environment is found by its stamp; a changed pin, without
    installing allowed, is a skip with the reason, and needing no package is the project's own
    interpreter."""
    python = tmp_path / "litserve" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    (tmp_path / "litserve" / peer_envs.STAMP).write_text("litserve==0.2.19\nnumpy==2.4.6\n")
    pins = ("litserve==0.2.19", "numpy==2.4.6")
    assert peer_envs.peer_python("litserve", pins, tmp_path, install=False) == python
    with pytest.raises(peer_envs.PeerUnavailable, match="not installed"):
        peer_envs.peer_python("litserve", ("litserve==0.2.20",), tmp_path, install=False)
    assert peer_envs.peer_python("fastapi", (), tmp_path, install=False) == Path(sys.executable)
