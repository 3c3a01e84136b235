"""The dashboard is well-formed Grafana JSON wired to the provisioned datasource, and covers the
panels issue 5 asks for. Whether its queries return data is test_live.py's job."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.files import (
    DATASOURCES,
    GRAFANA_VARIABLES,
    dashboard_panels,
    dashboard_queries,
    load_dashboard,
    load_yaml,
)

# Panel types of Grafana's core plugins that the dashboard may use (no plugin installs needed).
CORE_PANELS = {"timeseries", "stat", "bargauge", "gauge", "table", "heatmap", "text"}
GRID_WIDTH = 24

# Every server metric issue 5 wants on screen (histograms through their _bucket/_sum/_count).
REQUIRED_METRICS = {
    "bap_requests_total",
    "bap_request_duration_seconds",
    "bap_queue_wait_seconds",
    "bap_inference_duration_seconds",
    "bap_batch_size",
    "bap_batches_total",
    "bap_queue_depth",
    "bap_domain_parameters",
    "bap_domain_macs",
    "bap_model_parameters",
    "bap_model_info",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    return source


def test_dashboard_has_the_top_level_essentials(dashboard) -> None:
    assert isinstance(dashboard["uid"], str) and 0 < len(dashboard["uid"]) <= 40
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    assert "id" not in dashboard  # Grafana assigns ids; a fixed one clashes across instances
    assert dashboard["templating"]["list"] == []  # queries use built-in variables only


def test_panels_are_laid_out_on_the_grid(dashboard) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= GRID_WIDTH and pos["h"] > 0


def test_every_panel_queries_the_provisioned_datasource(dashboard, datasource) -> None:
    assert datasource["type"] == "prometheus"
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    panels = dashboard_panels(dashboard)
    assert panels
    for panel in panels:
        assert panel["type"] in CORE_PANELS, panel["title"]
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_queries_use_only_variables_the_live_test_knows(dashboard) -> None:
    for title, expr in dashboard_queries(dashboard):
        unknown = set(re.findall(r"\$\w+", expr)) - set(GRAFANA_VARIABLES)
        assert not unknown, f"{title}: {unknown}"


def test_dashboard_shows_every_required_metric(dashboard) -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries(dashboard))
    used = set(re.findall(r"\bbap_\w+", exprs))
    base = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert base >= REQUIRED_METRICS, f"missing: {REQUIRED_METRICS - base}"


def test_latency_panel_shows_p50_p95_p99_per_domain(dashboard) -> None:
    quantiles = {
        float(q)
        for _, expr in dashboard_queries(dashboard)
        if "bap_request_duration_seconds_bucket" in expr and "by (domain, le)" in expr
        for q in re.findall(r"histogram_quantile\(([\d.]+)", expr)
    }
    assert quantiles == {0.5, 0.95, 0.99}
