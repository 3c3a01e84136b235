"""docker-compose.yml and the Dockerfile hold together, checked without a Docker engine.

Structure, limits and health checks; every file a service mounts exists; ports, volumes and
settings agree across the compose file, the Dockerfile, the Prometheus and Grafana files and the
server's Settings; the image copies only what .dockerignore lets into the build context.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from model_store import current_version, list_versions
from server.config import Settings
from tests.deploy.files import (
    ALERT_RULES,
    COMPOSE,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    DOCKERFILE,
    DOCKERIGNORE,
    PROMETHEUS_CONFIG,
    ROOT,
    alert_rules,
    dockerfile_env,
    dockerfile_stages,
    load_yaml,
    split_alert,
)

SERVER_ENV = {
    f"{Settings.model_config['env_prefix']}{name.upper()}" for name in Settings.model_fields
}
SETUP_KNOBS = set(re.findall(r"\bBAP_[A-Z_]+", (ROOT / "scripts" / "setup.sh").read_text()))
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """What compose makes of `${VAR:-default}` when VAR is unset: the default (or empty)."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group(2) or "", value)
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(interpolate(v)) for k, v in service.get("environment", {}).items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, container path) of each short-syntax volume entry."""
    return [tuple(entry.split(":")[:2]) for entry in service.get("volumes", [])]


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repo file a container path comes from, through the service's bind mounts."""
    target = PurePosixPath(container_path)
    for source, mounted_at in mounts(service):
        if source.startswith(".") and target.is_relative_to(mounted_at):
            return COMPOSE.parent / source / target.relative_to(mounted_at)
    raise AssertionError(f"{container_path} is not inside any bind mount of the service")


def container_ports(service: dict[str, Any]) -> list[int]:
    return [int(interpolate(p).rsplit(":", 1)[1]) for p in service.get("ports", [])]


def url_port(url: str) -> tuple[str, int]:
    match = re.match(r"^https?://([\w.-]+):(\d+)", url)
    assert match, f"{url}: expected http://HOST:PORT"
    return match.group(1), int(match.group(2))


def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def ignored(path: str) -> bool:
    """Docker's rule: the last .dockerignore pattern matching the path or a parent decides."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatch(c, glob) for c in candidates):
            verdict = not negate
    return verdict


# ---- docker-compose.yml -----------------------------------------------------------------------


def test_services_restart_and_fit_a_small_box_together(services) -> None:
    assert set(services) == {"server", "prometheus", "grafana"}
    cpus = memory_mb = 0.0
    for name, service in services.items():
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        limits = service["deploy"]["resources"]["limits"]
        size = re.fullmatch(r"(\d+)([MG])", limits["memory"])
        assert size, f"{name}: memory limit {limits['memory']!r}, expected e.g. 512M"
        cpus += float(limits["cpus"])
        memory_mb += int(size.group(1)) * (1024 if size.group(2) == "G" else 1)
    # What the README promises: room left for the OS on a 4-core, 4 GB board.
    assert cpus <= 3 and memory_mb <= 3 * 1024


def test_every_service_has_a_health_check(services) -> None:
    for name in ("prometheus", "grafana"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and check["interval"] and check["retries"] >= 1
        # The probe talks to the port the service listens on.
        assert f":{container_ports(services[name])[0]}/" in check["test"][-1]
    # The server's comes from the image and must not be switched off here.
    assert not services["server"].get("healthcheck", {}).get("disable", False)
    assert re.search(r"^HEALTHCHECK .*/readyz", dockerfile_text(), re.M | re.S)


def test_host_ports_are_distinct(services) -> None:
    published = [interpolate(p).rsplit(":", 1)[0] for s in services.values() for p in s["ports"]]
    assert len(published) == len(set(published))


def test_server_settings_are_ones_the_server_reads(services) -> None:
    env = environment(services["server"])
    assert set(env) <= SERVER_ENV, f"unknown settings: {set(env) - SERVER_ENV}"
    # ...and with values it accepts (an empty token means "not configured").
    Settings(**{k.removeprefix("BAP_").lower(): v for k, v in env.items() if v != ""})
    assert env["BAP_HOST"] == "0.0.0.0"  # reachable from Prometheus and the published port


def test_server_port_store_and_threads_are_consistent(services) -> None:
    server = services["server"]
    env = environment(server)
    assert container_ports(server) == [int(env["BAP_PORT"])]
    assert f"EXPOSE {env['BAP_PORT']}" in dockerfile_text()
    (target,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == f"server:{env['BAP_PORT']}"
    assert env["BAP_STORE"] in [path for _, path in mounts(server)]
    # the runtime gets the CPU limit minus one core, which the event loop (HTTP, decoding) keeps
    cpus = float(server["deploy"]["resources"]["limits"]["cpus"])
    assert int(env["BAP_THREADS"]) == max(1, cpus - 1)


def test_queue_alert_threshold_follows_max_queue(services) -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "BapQueueSaturation"]
    _, threshold = split_alert(rule["expr"])
    assert threshold == 0.75 * int(environment(services["server"])["BAP_MAX_QUEUE"])


def test_drain_finishes_before_docker_kills(services) -> None:
    server = services["server"]
    grace = int(server["stop_grace_period"].removesuffix("s"))
    assert float(environment(server)["BAP_DRAIN_SECONDS"]) < grace


def test_every_mounted_file_exists_and_named_volumes_are_declared(compose, services) -> None:
    used = set()
    for name, service in services.items():
        for source, _ in mounts(service):
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} is missing"
            else:
                used.add(source)
    assert used == set(compose["volumes"])
    build = services["server"]["build"]
    assert (COMPOSE.parent / build["context"] / "Dockerfile").is_file()
    # the one build argument compose passes is one the Dockerfile declares, empty by default
    assert set(build["args"]) == {"BAP_EXTRAS"} and interpolate(build["args"]["BAP_EXTRAS"]) == ""
    assert re.search(r"^ARG BAP_EXTRAS=", dockerfile_text(), re.M)


def test_prometheus_reads_the_repo_config_and_rules(services) -> None:
    prometheus = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"])
    assert host_path(prometheus, flags["--config.file"]) == PROMETHEUS_CONFIG
    # rule_files are relative to the config file, which is mounted with its folder.
    for rule_file in load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        assert PROMETHEUS_CONFIG.parent / rule_file == ALERT_RULES
    assert flags["--storage.tsdb.path"] in [path for _, path in mounts(prometheus)]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard(services) -> None:
    grafana = services["grafana"]
    assert host_path(grafana, "/etc/grafana/provisioning/datasources") == DATASOURCES.parent
    assert host_path(grafana, "/etc/grafana/provisioning/dashboards") == DASHBOARD_PROVIDERS.parent
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert list(host_path(grafana, provider["options"]["path"]).glob("*.json"))
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()

    (source,) = load_yaml(DATASOURCES)["datasources"]
    host, port = url_port(source["url"])
    assert host == "prometheus" and port in container_ports(services["prometheus"])
    # Grafana's $__rate_interval is only right if it knows the scrape interval.
    assert (
        source["jsonData"]["timeInterval"]
        == load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    )


# ---- Dockerfile (no engine here: its instructions are read as text) ----------------------------


def test_image_is_multi_stage_and_built_by_the_setup_script() -> None:
    build, final = dockerfile_stages()
    # One interpreter for both stages: the venv built in the first runs in the second.
    assert build[0][1] == "${PYTHON_IMAGE} AS build" and final[0][1] == "${PYTHON_IMAGE}"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile_text(), re.M)
    assert any(kw == "RUN" and a.startswith("scripts/setup.sh") for kw, a in build)
    env = dockerfile_env(build)
    knobs = {k for k in env if k.startswith("BAP_")}
    assert knobs <= SETUP_KNOBS, f"setup.sh does not read {knobs - SETUP_KNOBS}"
    # the server alone by default: no torch extra, so no torch in the image (a build may pass
    # --build-arg BAP_EXTRAS=openvino for the opt-in runtime)
    assert env["BAP_EXTRAS"] == "${BAP_EXTRAS}"
    assert re.search(r'^ARG BAP_EXTRAS=""$', dockerfile_text(), re.M)
    # Debian packages for the build stage only: binutils (slim_venv.sh strips with it), no
    # Prometheus or browsers; an offline build empties the arg.
    assert env["BAP_SYSTEM_PACKAGES"] == "${BAP_BUILD_PACKAGES}"
    assert re.search(r"^ARG BAP_BUILD_PACKAGES=binutils$", dockerfile_text(), re.M)


def test_final_image_installs_nothing_and_runs_as_a_user() -> None:
    final = dockerfile_stages()[-1]
    runs = " ".join(a for kw, a in final if kw == "RUN")
    assert not re.search(r"apt-get|apt |pip|gcc|build-essential", runs), runs
    users = [a for kw, a in final if kw == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert [a for kw, a in final if kw == "ENTRYPOINT"] == ['["/app/scripts/entrypoint.sh"]']
    assert not [a for kw, a in final if kw == "CMD"]
    script = (ROOT / "scripts" / "entrypoint.sh").read_text().strip().splitlines()
    assert script[-1] == 'exec python -m server "$@"'  # exec: SIGTERM reaches the server


def test_final_image_settings_are_ones_the_server_reads() -> None:
    env = {k: v for k, v in dockerfile_env(dockerfile_stages()[-1]).items() if k.startswith("BAP_")}
    assert set(env) <= SERVER_ENV, f"unknown settings: {set(env) - SERVER_ENV}"
    assert env["BAP_HOST"] == "0.0.0.0"
    assert dockerfile_env(dockerfile_stages()[-1])["ORT_DISABLE_TELEMETRY"] == "1"  # sends nothing


def test_build_context_holds_everything_the_image_copies() -> None:
    build, _ = dockerfile_stages()
    for _, args in [(kw, a) for kw, a in build if kw == "COPY"]:
        *sources, _dest = args.split()
        for source in sources:
            if "[" in source:  # an optional folder (wheel[s]: a local wheel build only)
                source = re.sub(r"\[(.)\]", r"\1", source)
            else:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    assert ignored(".venv/bin/python") and ignored("server/__pycache__/x.pyc")


def test_bundled_model_is_there_to_seed_the_store() -> None:
    # The entrypoint seeds /store from model_store/bundled and the server serves BAP_MODEL
    # from it; without a committed bundled model (`make embedded`) the image serves nothing.
    model = dockerfile_env(dockerfile_stages()[-1])["BAP_MODEL"]
    record = ROOT / "model_store" / "bundled" / model / "REFS.json"
    assert record.is_file(), f"{record.relative_to(ROOT)} missing: run `make embedded`, commit it"
    assert not ignored(str(record.relative_to(ROOT)))


def test_entrypoint_seeds_an_empty_store_then_becomes_the_server(tmp_path: Path) -> None:
    """The image's entrypoint, run as it is from this tree: the empty volume gets the bundled
    versions and CURRENT, then the server itself runs (here `--help`, which exits at once); a
    second start copies nothing and leaves the operator's CURRENT alone."""
    store = tmp_path / "store"
    env = {**os.environ, "BAP_STORE": str(store), "BAP_MODEL": "embedded"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    run = [str(ROOT / "scripts" / "entrypoint.sh"), "--help"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    bundled = ROOT / "model_store" / "bundled"
    assert list_versions(store, "embedded") == list_versions(bundled, "embedded")
    assert current_version(store, "embedded") == current_version(bundled, "embedded")
    assert "usage: bap-serve" in out.stdout and "seeded ['v" in out.stdout
    out = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    assert "seeded nothing" in out.stdout


def test_an_air_gapped_box_can_build_and_carry_the_image() -> None:
    """pip's own variables are build args (a local wheel folder, no index) and the wheels stay
    out of the final image."""
    build, final = dockerfile_stages()
    args = {a.split("=")[0] for kw, a in build if kw == "ARG"}
    assert {"PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_INDEX_URL"} <= args
    runs = " ".join(a for kw, a in build if kw == "RUN")
    assert "rm -rf /app/wheels" in runs  # the final stage copies /app: no wheels in it
    assert not ignored("wheels/x.whl")
