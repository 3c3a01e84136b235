"""The training CLI: its guards (what it refuses before any data is loaded or any step is
trained) and its output."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_store import list_versions
from tests.server.conftest import publish_random
from tests.training.conftest import tiny_config
from training import cli


class Trained(Exception):
    """Raised in place of training: the command got past every guard."""


@pytest.fixture(autouse=True)
def _keep_log_level() -> Iterator[None]:
    """`main` sets the training logger's level for its process; these tests share one."""
    level = logging.getLogger("training").level
    yield
    logging.getLogger("training").setLevel(level)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise Trained

    monkeypatch.setattr(cli, "train", refuse)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config().to_dict()))
    return path


def test_train_without_a_config_asks_for_one_or_for_the_smoke_run(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--store", str(tmp_path / "store"), "--name", "photos"]
    assert cli.main([*args, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "--config" in err and "--smoke" in err and not run_dir.exists()
    with pytest.raises(Trained):
        cli.main([*args, "--run-dir", str(run_dir), "--smoke"])


def test_train_into_a_model_with_versions_needs_replace(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    publish_random(store, seed=0)  # the model "tiny", as the config names it
    args = ["train", "--config", str(write_config(tmp_path)), "--store", str(store)]
    args += ["--run-dir", str(tmp_path / "run")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{store / 'tiny'} already has versions v1" in err and "--replace" in err
    assert list_versions(store, "tiny") == ["v1"] and not (tmp_path / "run").exists()
    with pytest.raises(Trained):
        cli.main([*args, "--replace"])
    with pytest.raises(Trained):  # another name is a new model: nothing to replace
        cli.main([*args, "--name", "tiny2"])


def test_inspect_names_how_many_independent_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_random(tmp_path, seed=0)  # three domains
    assert cli.main(["inspect", "--store", str(tmp_path), "--name", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "for 3 independent models" in out and "N independent" not in out


def test_a_closed_pipe_ends_the_output_quietly(tmp_path: Path) -> None:
    """`python -m training inspect ... | head -3`: the reader goes away before the writer ends."""
    publish_random(tmp_path, seed=0)
    args = ["inspect", "--store", str(tmp_path), "--name", "tiny"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "training", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # closed before the interpreter has even started: every write fails
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "Broken pipe" not in err and "BrokenPipe" not in err


def test_train_refuses_a_stage_2_too_short_for_the_budget_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "short.json"  # 96 images a domain at batch 16: 1 epoch is 6 steps
    config.write_text(json.dumps(tiny_config(epochs=1.0, min_bap_steps=0).to_dict()))
    args = ["train", "--config", str(config), "--store", str(tmp_path / "store")]
    args += ["--run-dir", str(tmp_path / "run"), "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "stage 2 would run 6 steps" in err and "--force" in err
    assert not list((tmp_path / "run").glob("*.safetensors"))  # refused before any step
    asked: dict[str, object] = {}

    def train(*args: object, **kwargs: object) -> None:
        asked.update(kwargs)
        raise Trained

    monkeypatch.setattr(cli, "train", train)
    with pytest.raises(Trained):
        cli.main([*args, "--force"])
    assert asked["check_schedule"] is False
