"""The deployment files and what the tests read out of them: paths, parsed YAML/JSON, PromQL."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "bap.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "bap.json"

# Grafana's built-in range variables the dashboard may use, and what the live test puts in their
# place. Anything else starting with `$` is an unknown template variable and fails the tests.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}

# `<measure> <comparison> <number>` at the end of an alert expression (alerts.yml promises it).
_THRESHOLD = re.compile(
    r"^(?P<measure>.*\S)\s*(?:==|!=|>=|<=|>|<)\s*(?P<threshold>[-+]?[0-9.]+(?:e[-+]?\d+)?)\s*$",
    re.S,
)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title + refId, PromQL expression) for every target of every panel."""
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def split_alert(expr: str) -> tuple[str, float]:
    """An alert expression as (the measure before its final comparison, the threshold)."""
    match = _THRESHOLD.match(expr)
    if match is None:
        raise ValueError(f"alert expression does not end in `<comparison> <number>`: {expr!r}")
    return match.group("measure"), float(match.group("threshold"))


def substitute_grafana_variables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions (KEYWORD, arguments) per stage; comments dropped, continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), args.strip()))
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV settings of one stage (`ENV A=1 B="x y"` form)."""
    pairs = [
        token.split("=", 1) for kw, args in stage if kw == "ENV" for token in shlex.split(args)
    ]
    return dict(pairs)


def healthcheck_command() -> list[str]:
    """The final image's HEALTHCHECK command, written in exec form."""
    (args,) = [a for kw, a in dockerfile_stages()[-1] if kw == "HEALTHCHECK"]
    return json.loads(args.split(" CMD ", 1)[1])
