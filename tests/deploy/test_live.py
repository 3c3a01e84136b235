"""A real Prometheus scrapes a real server: every dashboard query and alert measure returns data.

One stack per module: `python -m server` on a loopback port with a tiny random model published
into a temp store, and Debian's `prometheus` binary running deploy/prometheus/prometheus.yml and
alerts.yml with only the target and the intervals (1 s) changed. Traffic goes to every domain in
two waves with a reload to a newly published version between them (the README's swap procedure),
so rates over the window are non-zero and the dashboard must show the new version. Each wave is
waited for by polling Prometheus until it reports the server's own request count, never by
sleeping a fixed time.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from model_store import (
    DomainMetrics,
    Manifest,
    baseline_cost,
    build_model,
    independent_parameters,
    model_parameters,
    prune_to_union,
    publish_version,
    single_domain_parameters,
)
from tests.conftest import randomize, tiny_spec
from tests.deploy.files import (
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    ROOT,
    alert_rules,
    dashboard_queries,
    healthcheck_command,
    load_dashboard,
    load_yaml,
    split_alert,
    substitute_grafana_variables,
)

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not on PATH; scripts/setup.sh installs Debian's prometheus as root",
    ),
]

MODEL = "edge"
TOKEN = "deploy-test-admin-token-0123456789"
DOMAINS = tiny_spec().domain_names
IMAGES_PER_DOMAIN = 6
STARTUP_TIMEOUT = 60.0  # torch import + load + warm-up on a busy 2-core CI box
SCRAPE_TIMEOUT = 20.0

T = TypeVar("T")


@dataclass
class Child:
    """A process this module started, and the file its output goes to."""

    proc: subprocess.Popen
    log: Path


@dataclass
class Stack:
    server: httpx.Client
    port: int  # the server's
    prometheus: httpx.Client
    prometheus_child: Child


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**settings: str) -> dict[str, str]:
    """This environment without our settings or proxies (everything here is loopback)."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BAP_") and not k.lower().endswith("_proxy")
    }
    return keep | settings


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[Child]:
    """Run a child with output to `log`; stop it (TERM, then KILL) however the test ends."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Child(proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(what: str, check: Callable[[], T | None], timeout: float, child: Child) -> T:
    """Poll `check` until it returns something truthy; fail with the child's log otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if child.proc.poll() is not None:
            pytest.fail(f"{what}: exited with {child.proc.returncode}\n{log_tail(child.log)}")
        try:
            result = check()
        except httpx.TransportError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{log_tail(child.log)}")
        time.sleep(0.2)


def publish(store: Path, seed: int) -> str:
    """Publish a tiny random pruned model with its real parameter totals; make it CURRENT."""
    torch.manual_seed(seed)
    model = prune_to_union(randomize(build_model(tiny_spec()), seed=seed))
    spec = model.spec
    manifest = Manifest(
        name=MODEL,
        spec=spec,
        budget=0.5,
        budget_unit="macs",
        domains={
            d: DomainMetrics(None, 1000 * (i + 1), 5000 * (i + 1), 0.4)
            for i, d in enumerate(DOMAINS)
        },
        totals={
            "parameters": model_parameters(spec),
            "single_domain_parameters": single_domain_parameters(spec),
            "independent_parameters": independent_parameters(spec),
            "baseline_macs": baseline_cost(spec, "macs", 0),
        },
    )
    return publish_version(store, model, manifest).version


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


def query(prometheus: httpx.Client, expr: str) -> list[dict[str, Any]]:
    """An instant query; fails the test with Prometheus's message if the PromQL is rejected."""
    response = prometheus.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (
        f"Prometheus rejected {expr!r}: {body.get('errorType')}: {body.get('error')}"
    )
    return body["data"]["result"]


def served_requests(server: httpx.Client) -> float:
    """The server's own count of classify requests, from its /metrics."""
    text = server.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bap_requests_total"
    )


def send_wave(server: httpx.Client, seed: int) -> None:
    """Concurrent good images to every domain (so batches form), plus a 404 and a 400."""
    headers = {"content-type": "image/png"}

    def classify(args: tuple[str, int]) -> int:
        domain, i = args
        return server.post(
            f"/classify?domain={domain}", content=png(seed + i), headers=headers
        ).status_code

    jobs = [(d, i) for d in DOMAINS for i in range(IMAGES_PER_DOMAIN)]
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(classify, jobs)) == {200}
    assert server.post("/classify?domain=nope", content=png(0), headers=headers).status_code == 404
    bad = server.post(f"/classify?domain={DOMAINS[0]}", content=b"not an image", headers=headers)
    assert bad.status_code == 400


def prometheus_config(target: str, scratch: Path) -> Path:
    """deploy/prometheus/prometheus.yml with a loopback target and 1 s intervals."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERT_RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    path = scratch / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_server(stop: ExitStack, store: Path, scratch: Path) -> tuple[httpx.Client, int]:
    """`python -m server` on a free loopback port, serving `store`, once /readyz says ready."""
    port = free_port()
    env = child_env(
        BAP_STORE=str(store),
        BAP_MODEL=MODEL,
        BAP_HOST="127.0.0.1",
        BAP_PORT=str(port),
        BAP_THREADS="1",
        BAP_ADMIN_TOKEN=TOKEN,
        BAP_LOG_LEVEL="warning",
        BAP_DRAIN_SECONDS="2",
    )
    child = stop.enter_context(
        process([sys.executable, "-m", "server"], env, scratch / "server.log")
    )
    client = stop.enter_context(
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)
    )
    wait_for(
        "server ready", lambda: client.get("/readyz").status_code == 200, STARTUP_TIMEOUT, child
    )
    return client, port


def start_prometheus(stop: ExitStack, target: str, scratch: Path) -> tuple[httpx.Client, Child]:
    """Debian's prometheus on a free loopback port with temp storage, once /-/ready says so."""
    port = free_port()
    cmd = [
        PROMETHEUS,
        f"--config.file={prometheus_config(target, scratch)}",
        f"--storage.tsdb.path={scratch / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    child = stop.enter_context(process(cmd, child_env(), scratch / "prometheus.log"))
    client = stop.enter_context(
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False)
    )
    wait_for("Prometheus ready", lambda: client.get("/-/ready").is_success, 30, child)
    return client, child


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    scratch = tmp_path_factory.mktemp("live")
    store = scratch / "store"
    publish(store, seed=0)
    with ExitStack() as stop:
        server, port = start_server(stop, store, scratch)
        prometheus, child = start_prometheus(stop, f"127.0.0.1:{port}", scratch)
        for wave in range(2):
            if wave == 1:  # the README's swap: publish into the store, then reload
                publish(store, seed=1)
                reload = server.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
                assert reload.json()["version"] == "v2", reload.text
            send_wave(server, seed=100 * wave)
            # PromQL `==` filters: a series comes back once the scrape has the server's count.
            seen = f'sum(bap_requests_total{{job="bap"}}) == {served_requests(server)}'
            wait_for(
                f"scrape of wave {wave}", partial(query, prometheus, seen), SCRAPE_TIMEOUT, child
            )
        yield Stack(server, port, prometheus, child)


DASHBOARD_QUERIES = dashboard_queries(load_dashboard())


@pytest.mark.parametrize(
    "expr", [e for _, e in DASHBOARD_QUERIES], ids=[t for t, _ in DASHBOARD_QUERIES]
)
def test_dashboard_query_returns_data(stack: Stack, expr: str) -> None:
    result = query(stack.prometheus, substitute_grafana_variables(expr))
    assert result, f"no series for {expr!r}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(v) for v in values), f"only NaN/Inf for {expr!r}: {result}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_parses_and_its_measure_returns_data(stack: Stack, rule: dict[str, Any]) -> None:
    query(stack.prometheus, rule["expr"])  # the whole condition parses (empty: not firing)
    measure, _ = split_alert(rule["expr"])
    result = query(stack.prometheus, measure)
    assert result, f"{rule['alert']}: no series for {measure!r}"
    assert any(math.isfinite(float(s["value"][1])) for s in result), result


def test_rules_evaluate_cleanly_and_a_healthy_server_trips_none(stack: Stack) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = stack.prometheus.get("/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # Go's zero time means "not evaluated yet".
        done = all(not rule["lastEvaluation"].startswith("0001-") for rule in rules)
        return rules if done else None

    rules = wait_for("rule evaluation", evaluated, SCRAPE_TIMEOUT, stack.prometheus_child)
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    assert all(rule["health"] == "ok" for rule in rules), rules
    # Not even pending: no 5xx, a shallow queue, the target up. Latency is left out because
    # it depends on how loaded the test machine is, not on the server's health.
    alerts = stack.prometheus.get("/api/v1/alerts").json()["data"]["alerts"]
    assert [a for a in alerts if a["labels"]["alertname"] != "BapHighP99Latency"] == []


def test_dashboard_shows_the_reloaded_version(stack: Stack) -> None:
    (info,) = query(stack.prometheus, "bap_model_info")
    assert info["metric"]["version"] == "v2" and info["metric"]["name"] == MODEL


def test_image_healthcheck_passes_when_ready_and_fails_when_down(stack: Stack) -> None:
    python, *args = healthcheck_command()
    assert python == "python"

    def check(port: int) -> int:
        env = child_env(BAP_PORT=str(port))
        return subprocess.run(
            [sys.executable, *args], env=env, capture_output=True, timeout=30
        ).returncode

    assert check(stack.port) == 0
    assert check(free_port()) != 0  # nothing listens there
