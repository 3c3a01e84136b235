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
from training.sources import load_domain
from training.trainer import REACH_STEPS, Trainer, train


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


@pytest.mark.slow
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
        min_bap_steps=0,  # exactly the 15 steps its epochs give
    )
    manifest, _ = publish_result(config, train(config, tmp_path / "run", progress=False), tmp_path)
    for name, export in manifest.training["export"].items():
        assert export["cost_trained"] <= config.budget + MAX_EXPORT_COST_CUT, name


def embedded_like(**changes) -> TrainConfig:
    """The bundled preset's stage-2 settings on the tiny domains (96 images, batch 16): its 1.5
    stage-2 epochs are 9 steps, the case a user met with a few hundred images of their own."""
    settings = dict(
        dual_lr=0.1,
        score_lr=0.1,
        score_momentum=0.9,
        distill_weight=0.5,
        pretrain_epochs=4,
        epochs=1.5,
        recovery_epochs=1.0,
        bn_recalibration_batches=5,
        checkpoint_every=1000,
        min_bap_steps=TrainConfig.min_bap_steps,  # the default, which tiny_config turns off
    )
    return tiny_config(**{**settings, **changes})


@pytest.mark.slow
def test_a_short_stage_2_is_lengthened_until_training_reaches_the_budget(tmp_path: Path) -> None:
    """9 steps (min_bap_steps 0) end at 0.51-0.53 of the MACs and the export's cut takes two
    domains from 0.98 / 0.83 to 0.63 / 0.40, refused after the run; min_bap_steps' 50 reach
    0.42 and publish with nothing cut."""
    config = embedded_like()
    torch.manual_seed(0)
    manifest, _ = publish_result(config, train(config, tmp_path / "run", progress=False), tmp_path)
    assert manifest.training["config"]["min_bap_steps"] == 50
    for name, export in manifest.training["export"].items():
        assert export["filters_switched_off"] == 0, name


def test_min_bap_steps_sets_the_length_of_a_short_stage_2() -> None:
    data = [load_domain(d, 18, 16) for d in tiny_config().domains]  # 6 steps an epoch
    plan = {
        (epochs, least): Trainer(
            embedded_like(epochs=epochs, min_bap_steps=least), Path("unused"), data, False
        ).plan["bap"]
        for epochs in (0.0, 1.5, 10.0)
        for least in (0, 50)
    }
    assert plan == {
        (0.0, 0): 0,  # no stage 2 asked for: none run
        (0.0, 50): 0,
        (1.5, 0): 9,
        (1.5, 50): 50,
        (10.0, 0): 60,
        (10.0, 50): 60,  # long enough already
    }
    older = {k: v for k, v in embedded_like().to_dict().items() if k != "min_bap_steps"}
    assert TrainConfig.from_record(older).min_bap_steps == 0  # ran, and resumes, as it was


def test_a_stage_2_too_short_for_the_budget_is_refused_before_training(tmp_path: Path) -> None:
    for epochs, steps in ((1.5, 9), (0.0, 0)):
        config = embedded_like(epochs=epochs, min_bap_steps=0)
        with pytest.raises(ValueError, match=f"stage 2 would run {steps} steps .* --force"):
            train(config, tmp_path / "run", progress=False, check_schedule=True)
        assert not list((tmp_path / "run").glob("*.safetensors"))  # no step was trained
    data = [load_domain(d, 18, 16) for d in tiny_config().domains]
    at_one = embedded_like(epochs=1.5, min_bap_steps=0, budget=1.0)  # nothing to reach
    assert Trainer(at_one, tmp_path, data, False).schedule_problem() is None
    enough = embedded_like(epochs=1.5, min_bap_steps=REACH_STEPS)
    assert Trainer(enough, tmp_path, data, False).schedule_problem() is None
