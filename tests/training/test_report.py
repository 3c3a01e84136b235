"""The reduced results pipeline: every method runs, the table and the plot are written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import tiny_config

pytestmark = pytest.mark.slow  # end-to-end: make test runs it, make test-fast does not


def report(cfg: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["report", "--config", str(cfg), "--budgets", "0.5", "--out", str(tmp_path / "docs")]
    args += ["--work-dir", str(tmp_path / "runs"), "--quiet", *extra]
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True)


def test_report_runs_every_method_and_writes_table_and_plot(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(tiny_config(pretrain_epochs=4, epochs=3).to_dict()))
    run = report(cfg, tmp_path)
    assert run.returncode == 0, run.stderr
    text = (tmp_path / "docs" / "results.md").read_text()
    for method in (
        "(1) independent",
        "(2) frozen backbone",
        "(3) budget loss, no sharing β=0.5",
        "(4) BAP β=0.5",
    ):
        assert method in text
    for domain in ("shapes", "colours", "noise"):
        assert domain in text
    png = (tmp_path / "docs" / "accuracy_vs_budget.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    # the budget guarantee shows in the table: BAP's largest per-domain cost is <= 0.5
    bap = next(line for line in text.splitlines() if line.startswith("| (4) BAP β=0.5"))
    max_cost = float(bap.split("|")[-4])
    assert max_cost <= 0.5

    # a rerun into the same runs is refused unless it resumes; resumed, every run reloads
    # (finished: nothing retrains) and the table is the same
    again = report(cfg, tmp_path)
    assert again.returncode != 0 and "pass --resume" in again.stderr
    resumed = report(cfg, tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    new_text = (tmp_path / "docs" / "results.md").read_text()
    assert rows == [line for line in new_text.splitlines() if line.startswith("| (")]


def test_report_from_a_given_stage1_network_starts_every_method_from_it_unchanged(
    tmp_path: Path,
) -> None:
    from safetensors.torch import load_file, save_file

    from training.trainer import train

    first = tiny_config(pretrain_epochs=2, epochs=1, recovery_epochs=0.5)
    stage1 = train(first.override(epochs=0.0), tmp_path / "stage1", progress=False).model
    backbone = tmp_path / "stage1.safetensors"
    save_file({k: v.contiguous() for k, v in stage1.state_dict().items()}, str(backbone))
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(first.to_dict()))

    wrong = report(cfg, tmp_path, "--backbone", str(backbone), "--epochs-scale", "0.3=2")
    assert wrong.returncode != 0 and "not in --budgets" in wrong.stderr
    run = report(cfg, tmp_path, "--backbone", str(backbone), "--epochs-scale", "0.5=2")
    assert run.returncode == 0, run.stderr
    # stage 1 is the given network bit for bit: not pretrained further, no recovery epoch
    given = load_file(str(backbone))
    used = load_file(str(tmp_path / "runs" / "pretrained.safetensors"))
    assert given.keys() == used.keys()
    assert all((given[k] == used[k]).all() for k in given)
    text = (tmp_path / "docs" / "results.md").read_text()
    assert f"stage 1 loaded from `{backbone}`" in text
    # the scaled budget trains twice the config's stage-2 epochs, BAP and (3) alike
    assert "| (4) BAP β=0.5, 2 stage-2 epochs |" in text
    assert "| (3) budget loss, no sharing β=0.5, 2 stage-2 epochs |" in text
    config = json.loads((tmp_path / "runs" / "4-0.5" / "config.json").read_text())
    assert config["epochs"] == 2.0

    missing = report(cfg, tmp_path, "--backbone", str(tmp_path / "nope.safetensors"))
    assert missing.returncode != 0 and "no such file" in missing.stderr

    # the ablations can be left out of a costly report; (1) and BAP still run
    short = tmp_path / "short"
    args = ["--backbone", str(backbone), "--skip", "frozen", "no-sharing"]
    run = report(cfg, short, *args)
    assert run.returncode == 0, run.stderr
    methods = [
        line.split("|")[1].strip()
        for line in (short / "docs" / "results.md").read_text().splitlines()
        if line.startswith("| (")
    ]
    assert {m[:3] for m in methods} == {"(1)", "(4)"}


def test_methods_from_a_pretrained_config_start_from_the_stage1_network(tmp_path: Path) -> None:
    """A pretrained config's methods run from the report's stage-1 network (`backbone`, not
    both) with the recipe the pretrained file implied: RRC and ImageNet statistics."""
    from training.config import TrainConfig
    from training.report import on_backbone

    config = TrainConfig(arch="resnet18", width=1.0, pretrained="r18.pth")
    run = on_backbone(config, tmp_path / "stage1.safetensors", pretrain_epochs=0.0, budget=0.25)
    assert (run.pretrained, run.backbone) == (None, str(tmp_path / "stage1.safetensors"))
    assert (run.augmentation, run.normalization) == ("random_resized_crop", "imagenet")
    assert (run.budget, run.stage1_epochs) == (0.25, 0.0)
