"""The budget must be reached by training: an export that cuts blindly is refused unless forced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_store import list_versions
from tests.training.conftest import tiny_config
from training.publish import ExportRefused, publish_result
from training.trainer import train


@pytest.fixture(scope="module")
def untrained_switches(tmp_path_factory: pytest.TempPathFactory):
    """Stage 2 skipped: every filter still on, so the export must cut half of each domain."""
    torch.manual_seed(0)
    config = tiny_config(budget=0.5, epochs=0.0, recovery_epochs=0.0)
    return config, train(config, tmp_path_factory.mktemp("run"), progress=False)


def test_a_blind_export_cut_is_refused_with_what_to_change(untrained_switches, tmp_path: Path):
    config, result = untrained_switches
    with pytest.raises(ExportRefused, match="--epochs") as refused:
        publish_result(config, result, tmp_path)
    assert "1.000 -> 0.5" in str(refused.value) or "1.000 -> 0.4" in str(refused.value)
    assert not (tmp_path / config.name).exists()  # nothing was published


def test_forced_export_publishes_and_records_the_cut(untrained_switches, tmp_path: Path):
    config, result = untrained_switches
    manifest, _ = publish_result(config, result, tmp_path, force=True)
    assert list_versions(tmp_path, config.name) == [manifest.version]
    for name, export in manifest.training["export"].items():
        assert export["filters_switched_off"] > 0, name
        assert export["cost_trained"] == pytest.approx(1.0)
        assert export["cost_exported"] <= config.budget
        assert export["accuracy_exported"] == manifest.domains[name].accuracy
