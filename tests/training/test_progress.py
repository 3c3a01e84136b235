"""What a user sees while training and evaluating: one bar over every phase (phase i/n, so its
ETA is the whole run's), a line of what was loaded, and a bar while test sets are measured."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from model_store import ModelSpec, build_model
from tests.training.conftest import tiny_config
from training.evaluate import accuracy
from training.sources import load_domain
from training.trainer import train

PHASES = ("pretrain", "bap", "recover", "recalibrate")


def test_one_bar_counts_the_phases_and_every_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny_config(pretrain_epochs=1, epochs=1, recovery_epochs=1, bn_recalibration_batches=2)
    with caplog.at_level(logging.INFO, logger="training"):
        train(config, tmp_path / "run", progress=True)
    bar = capsys.readouterr().err
    assert all(f"{i}/4 {name}" in bar for i, name in enumerate(PHASES, 1))
    assert "24/24" in bar  # 6 steps a phase (96 images, batch 16) + 2 BN batches a domain
    assert (
        "loaded 3 domains, 288 training and 144 test images: shapes 3 classes 96/48, "
        "colours 4 classes 96/48, noise 3 classes 96/48"
    ) in caplog.text


def test_evaluation_shows_a_bar_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    data = load_domain(tiny_config().domains[0], 18, 16)
    model = build_model(ModelSpec(domains=(data.domain_spec(),), width=0.25, input_size=16))
    accuracy(model, data, batch_size=16)
    assert "evaluate shapes" not in capsys.readouterr().err  # quiet unless asked (WARNING)
    logging.getLogger("training").setLevel(logging.INFO)
    try:
        accuracy(model, data, batch_size=16)
    finally:
        logging.getLogger("training").setLevel(logging.NOTSET)
    assert "evaluate shapes" in capsys.readouterr().err
