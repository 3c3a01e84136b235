"""Distillation from the stage-1 network: the knob changes the loss, its temperature is refused
without it, and a run keeps the stage-1 network it distils from beside its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.config import DISTILL_TEMPERATURE, TrainConfig
from training.sources import load_domain
from training.trainer import PRETRAINED, Trainer, train

from .conftest import tiny_config


def trainer_for(config: TrainConfig, run_dir: Path) -> Trainer:
    data = [load_domain(d, config.resize, config.crop) for d in config.domains]
    return Trainer(config, run_dir, data, progress=False)


def test_distilling_from_itself_leaves_only_the_label_term(tmp_path: Path) -> None:
    """KL(p || p) = 0, so with the teacher equal to the student the loss is (1 - a) CE exactly."""
    config = tiny_config(distill_weight=0.25)
    trainer = trainer_for(config, tmp_path)
    trainer.keep_pretrained()
    trainer.teacher = trainer.load_pretrained()
    trainer.model.eval()  # the teacher runs in eval mode: the same BN statistics on both sides
    x, y, _ = trainer.batch(0)
    logits = trainer.model(x, 0)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert trainer.task_loss(0, logits, x, y).item() == pytest.approx(0.75 * ce.item(), abs=1e-5)


def test_distill_weight_changes_the_stage_2_loss(tmp_path: Path) -> None:
    losses = []
    for weight in (0.0, 0.5):
        trainer = trainer_for(tiny_config(distill_weight=weight), tmp_path)
        if weight:
            trainer.keep_pretrained()
            trainer.teacher = trainer.load_pretrained()
        losses.append(trainer.bap_step(1, 10)[0].item())
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"distill_temperature": 3.0}, "distill_temperature has no effect with distill_weight 0"),
        ({"distill_weight": 1.5}, "distill_weight must be in \\[0, 1\\]"),
        ({"distill_weight": 0.5, "distill_temperature": 0.0}, "distill_temperature must be > 0"),
    ],
)
def test_distillation_settings_are_checked(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({**tiny_config().to_dict(), **changes})


def test_the_temperature_default_goes_with_the_weight() -> None:
    on = tiny_config(distill_weight=0.5)
    assert on.distill_temperature == DISTILL_TEMPERATURE
    assert on.override(distill_weight=0.0).distill_temperature is None


def test_a_distilled_run_keeps_its_stage_1_network(tmp_path: Path) -> None:
    """The kept file is stage 1's network: stage 2 freezes the shared convolutions, so the
    trained model's shared weights are still exactly the kept ones (recovery is off here)."""
    config = tiny_config(pretrain_epochs=1, epochs=1, recovery_epochs=0, distill_weight=0.5)
    result = train(config, tmp_path / "run", progress=False)
    kept = load_file(str(tmp_path / "run" / PRETRAINED))
    state = result.model.state_dict()
    shared = [k for k in kept if k.startswith("blocks.") and k.endswith("conv1.weight")]
    assert shared and all(torch.equal(kept[k], state[k]) for k in shared)
