"""Every mode-specific knob changes the run that reads it and is refused where nothing reads it;
a resumed run keeps its settings; a published run is not published twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import mark_published
from training.config import MODE_DEFAULTS, TrainConfig
from training.sources import load_domain
from training.trainer import Trainer, train

from .conftest import tiny_config


def first_step(config: TrainConfig, tmp_path: Path) -> tuple[float, torch.Tensor]:
    """Stage-2 loss of the first step, taken as step 1 of 10, and the multipliers after it."""
    data = [load_domain(d, config.resize, config.crop) for d in config.domains]
    trainer = Trainer(config, tmp_path, data, progress=False)
    loss, _ = trainer.bap_step(1, 10)
    return loss.item(), trainer.duals.values.clone()


@pytest.mark.parametrize(
    ("knob", "mode"),
    [
        ("budget_weight", {"budget_control": "hinge"}),
        ("sharing_weight", {"budget_control": "hinge"}),
        ("sharing_warmup", {"budget_control": "hinge"}),
        ("dual_lr", {"budget_control": "dual"}),
    ],
)
def test_each_knob_changes_the_run_that_reads_it(knob: str, mode: dict, tmp_path: Path) -> None:
    base = tiny_config(**mode, **{knob: MODE_DEFAULTS[knob]})
    other = base.override(**{knob: MODE_DEFAULTS[knob] * 0.5})
    loss_a, duals_a = first_step(base, tmp_path / "a")
    loss_b, duals_b = first_step(other, tmp_path / "b")
    if knob == "dual_lr":  # the step's multipliers start at zero; the update is what it moves
        assert not torch.equal(duals_a, duals_b)
    else:
        assert loss_a != pytest.approx(loss_b, rel=1e-6)


@pytest.mark.parametrize(
    ("knob", "mode", "why"),
    [
        ("budget_weight", {"budget_control": "dual"}, "multipliers"),
        ("sharing_weight", {"budget_control": "dual", "sharing": "union"}, "own multiplier"),
        ("sharing_warmup", {"budget_control": "dual", "sharing": "union"}, "own multiplier"),
        ("sharing_weight", {"budget_control": "hinge", "sharing": "none"}, "no sharing loss"),
        ("dual_lr", {"budget_control": "hinge"}, "fixed weights"),
    ],
)
def test_a_knob_nothing_reads_is_refused(knob: str, mode: dict, why: str) -> None:
    data = {**tiny_config().to_dict(), "dual_lr": None, **mode, knob: 1.0}
    with pytest.raises(ValueError, match=f"{knob} has no effect.*{why}"):
        TrainConfig.from_dict(data)


def test_the_stored_config_records_what_ran() -> None:
    dual = TrainConfig()
    assert dual.dual_lr == MODE_DEFAULTS["dual_lr"] and dual.budget_weight is None
    hinge = dual.override(budget_control="hinge")  # the filled dual_lr goes with its mode
    assert hinge.dual_lr is None and hinge.budget_weight == MODE_DEFAULTS["budget_weight"]
    old = {**dual.to_dict(), "budget_weight": 5.0, "sharing_weight": 5.0}  # an older manifest
    assert TrainConfig.from_record(old) == dual


def test_resume_refuses_changed_settings_and_applies_safe_ones(tmp_path: Path) -> None:
    config = tiny_config(pretrain_epochs=1, epochs=1, recovery_epochs=0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config.save(run_dir / "config.json")
    with pytest.raises(ValueError, match=r"epochs: 1 -> 2\.0.*new --run-dir"):
        train(config.override(epochs=2.0), run_dir, resume=True, progress=False)
    train(config.override(threads=1), run_dir, resume=True, progress=False)
    assert TrainConfig.load(run_dir / "config.json").threads == 1


def test_a_published_run_is_not_resumed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tiny_config().save(run_dir / "config.json")
    mark_published(run_dir, tmp_path / "store" / "tiny" / "v1")
    cmd = [sys.executable, "-m", "training", "train", "--resume", "--run-dir", str(run_dir)]
    out = subprocess.run([*cmd, "--store", str(tmp_path / "store")], capture_output=True, text=True)
    assert out.returncode != 0 and "published as" in out.stderr and "tiny/v1" in out.stderr


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", "a"], "unique; repeated: \\['a'\\]"),
        (["ok", "bad name"], "domain name 'bad name' must be"),
        (["ok", "../up"], "domain name '../up' must be"),
    ],
)
def test_domain_names_are_checked_before_any_image_is_decoded(names, message) -> None:
    domains = [{"source": "no-such-source", "name": n} for n in names]
    with pytest.raises(ValueError, match=message):
        TrainConfig(domains=domains)
