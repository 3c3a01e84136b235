"""promtool accepts the scrape config and the rules, and the rule unit tests pass."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.files import ALERT_RULES, ALERT_TESTS, PROMETHEUS_CONFIG, alert_rules, load_yaml

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH; scripts/setup.sh installs Debian's prometheus package as root",
)


def promtool(*args: str) -> str:
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def test_config_is_valid_and_loads_the_rules() -> None:
    out = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert "1 rule files found" in out


def test_rules_are_valid() -> None:
    promtool("check", "rules", str(ALERT_RULES))


def test_rule_unit_tests_pass() -> None:
    promtool("test", "rules", str(ALERT_TESTS))


def test_every_alert_has_a_firing_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in load_yaml(ALERT_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert tested == {rule["alert"] for rule in alert_rules()}
