"""The budget must be reached by training: an export that cuts blindly is refused unless forced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_store import list_versions
from tests.training.conftest import tiny_config
from training.config import TrainConfig
from training.losses import DUAL_REFERENCE_STEPS, run_length_scale
from training.publish import MAX_EXPORT_COST_CUT, ExportRefused, publish_result
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


def test_run_length_scale_speeds_only_short_runs() -> None:
    assert run_length_scale(DUAL_REFERENCE_STEPS) == 1.0 == run_length_scale(10_000)
    assert run_length_scale(DUAL_REFERENCE_STEPS // 10) == pytest.approx(100.0)


def test_a_short_run_on_a_small_folder_reaches_the_budget_by_training(tmp_path: Path) -> None:
    """The case a new user met: two small domains (3 and 2 classes, 80 images), 3 + 3 epochs at
    batch 16, so stage 2 has 15 steps. Before the multipliers scaled with the run's length no
    switch moved (cost 1.000) and the export cut half the filters blindly; now training itself
    gets under the budget (0.492 and 0.424 measured) and publishing needs no --force."""
    domains = [
        {"source": "synthetic", "name": "a", "classes": 3, "train_size": 80, "seed": 1},
        {"source": "synthetic", "name": "b", "classes": 2, "train_size": 80, "seed": 2},
    ]
    domains = [dict(d, test_size=40) for d in domains]
    config = TrainConfig(
        name="short",
        domains=domains,
        pretrain_epochs=3,
        epochs=3,
        batch_size=16,
        recovery_epochs=0,
        bn_recalibration_batches=0,
    )
    manifest, _ = publish_result(config, train(config, tmp_path / "run", progress=False), tmp_path)
    for name, export in manifest.training["export"].items():
        assert export["cost_trained"] <= config.budget + MAX_EXPORT_COST_CUT, name
