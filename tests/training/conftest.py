"""A tiny synthetic training setup that runs in seconds on 2 cores."""

from __future__ import annotations

import pytest

from training.config import TrainConfig

TINY_DOMAINS = [
    {
        "source": "synthetic",
        "name": "shapes",
        "classes": 3,
        "train_size": 96,
        "test_size": 48,
        "seed": 1,
    },
    {
        "source": "synthetic",
        "name": "colours",
        "classes": 4,
        "train_size": 96,
        "test_size": 48,
        "seed": 2,
    },
    {
        "source": "synthetic",
        "name": "noise",
        "classes": 3,
        "train_size": 96,
        "test_size": 48,
        "seed": 3,
    },
]


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(
        name="tiny",
        domains=[dict(d) for d in TINY_DOMAINS],
        width=0.25,
        resize=18,
        crop=16,
        pretrain_epochs=8,
        epochs=8,
        batch_size=16,
        budget_control="dual",
        dual_lr=1.0,
        score_lr=0.1,
        score_momentum=0.0,
        checkpoint_every=2,
        min_bap_steps=0,  # each test sets its stage-2 length exactly, by epochs
    )
    return base.override(**changes)


@pytest.fixture
def config() -> TrainConfig:
    return tiny_config()
