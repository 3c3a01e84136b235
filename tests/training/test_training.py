"""End to end: a short real BAP run trains, prunes exactly, respects the budget, publishes a
servable version, and resumes after being killed."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

from model_store import (
    ArtifactError,
    cost_fraction,
    domain_key,
    load_version,
    mixed_key,
    open_version,
    union_filters,
)
from server.batching import Batch
from server.runner import predict, setup
from tests.recount import executed_macs, held_parameters
from tests.training.conftest import tiny_config
from training import trainer as trainer_module
from training.publish import publish_result
from training.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("run")
    config = tiny_config(budget=0.5)
    result = train(config, root / "run", progress=False)
    masks_before_export = [m.clone() for m in result.model.gated_masks()]
    manifest, pruned = publish_result(config, result, root / "store")
    return config, result, masks_before_export, manifest, pruned, root / "store"


def test_pruned_equals_masked_after_training(trained) -> None:
    _, result, _, _, pruned, _ = trained
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        for d in range(len(pruned.spec.domains)):
            diff = (result.model(x, d) - pruned(x, d)).abs().max().item()
            assert diff < 1e-4, f"domain {d}: {diff}"


def test_training_learned_something_and_switched_filters_off(trained) -> None:
    _, result, before, manifest, pruned, _ = trained
    for name, metrics in manifest.domains.items():
        chance = 1 / len(pruned.spec.domains[pruned.spec.domain_index(name)].labels)
        assert metrics.accuracy > chance + 0.1, name
    kept = sum(len(k) for k in union_filters(result.model))
    assert kept < sum(b.shape[1] for b in before)  # some filters were removed


def test_removed_filters_are_exactly_the_unused_ones(trained) -> None:
    _, result, _, _, pruned, _ = trained
    full, kept_masks = result.model.gated_masks(), pruned.gated_masks()
    assert len(full) == len(kept_masks) == len(pruned.spec.gated_filters())  # every gated conv
    for mask, kept_mask, kept in zip(full, kept_masks, union_filters(result.model), strict=True):
        used = mask.bool().any(dim=0).nonzero().flatten()
        assert torch.equal(kept, used)
        assert torch.equal(kept_mask, mask[:, kept])


def test_published_model_respects_budget_and_its_figures_recount(trained) -> None:
    config, _, _, manifest, _, store = trained
    loaded_manifest, loaded = load_version(store, config.name)
    assert loaded_manifest.version == manifest.version
    for d, name in enumerate(loaded.spec.domain_names):
        masks = [m[d].double() for m in loaded.gated_masks()]
        frac = cost_fraction(loaded.spec, config.budget_unit, d, masks).item()
        assert frac <= config.budget
        figures = loaded_manifest.domains[name]
        assert figures.cost_fraction <= config.budget
        assert figures.macs == executed_macs(loaded, d)
        assert figures.parameters == held_parameters(loaded, d)
    assert loaded_manifest.totals["parameters"] == sum(p.numel() for p in loaded.parameters())
    assert loaded_manifest.training["masked_vs_pruned_max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(pretrain_epochs=2, epochs=3, checkpoint_every=2)
    torch.manual_seed(0)
    whole = train(config, tmp_path / "whole", progress=False)

    calls = {"n": 0}
    original = trainer_module.Trainer.bap_step

    def dies_at_step_three(self, step, total):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return original(self, step, total)

    monkeypatch.setattr(trainer_module.Trainer, "bap_step", dies_at_step_three)
    torch.manual_seed(123)  # a different process state must not matter after resume
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "bap_step", original)
    meta = json.loads((tmp_path / "killed" / "config.json").read_text())
    assert meta["epochs"] == 3
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, tmp_path / "killed", progress=False)
    resumed = train(config, tmp_path / "killed", resume=True, progress=False)
    for a, b in zip(whole.scores, resumed.scores, strict=True):
        assert torch.equal(a, b)
    ours, theirs = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_cli_trains_publishes_and_inspects(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(tiny_config().to_dict()))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "training"]
    run = subprocess.run(
        [
            *cmd,
            "train",
            "--config",
            str(cfg),
            "--store",
            str(store),
            "--name",
            "smoke",
            "--run-dir",
            str(tmp_path / "run"),
            "--budget",
            "0.6",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "published" in run.stdout and "macs frac" in run.stdout
    manifest, model = load_version(store, "smoke")
    assert manifest.budget == 0.6
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16), 0).shape == (2, 3)
    for sub in ("inspect", "evaluate"):
        out = subprocess.run(
            [*cmd, sub, "--store", str(store), "--name", "smoke", "--json"],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        json.loads(out.stdout)

    # int8 graphs: calibrated, measured on the test split, listed under the SHA-256 check
    quant = subprocess.run(
        [*cmd, "quantize", "--store", str(store), "--name", "smoke", "--calibration-images", "32"],
        capture_output=True,
        text=True,
    )
    assert quant.returncode == 0, quant.stderr
    assert "smoke v2: v1 + int8 graphs" in quant.stdout and "CURRENT = v2" in quant.stdout
    stored = open_version(store, "smoke")  # v2, derived: v1 is never modified
    stored.verify()
    manifest, record = stored.manifest, stored.manifest.precisions["int8"]
    assert record.settings["calibration_images"] == 32
    assert set(record.accuracy) == set(record.accuracy_fp32) == set(manifest.spec.domain_names)
    assert all(0 <= a <= 1 for a in record.accuracy.values())
    int8_keys = {domain_key(d, "int8") for d in manifest.spec.domain_names} | {mixed_key("int8")}
    assert int8_keys <= set(manifest.files) and set(record.files) == int8_keys
    served = setup(store, "smoke", precision="int8")
    assert served.runtime.precision == "int8"
    names = list(manifest.spec.domain_names)
    images = [np.zeros((3, 16, 16), np.float32)] * len(names)
    probs = predict(Batch(served, "mixed", names, images, [0.0] * len(names)))
    assert all(abs(float(p.sum()) - 1) < 1e-5 for p in probs)

    # bf16 through OpenVINO: measured on the test split and recorded, then servable
    with pytest.raises(ArtifactError, match="measure-bf16 --version"):
        setup(store, "smoke", runtime="openvino", precision="bf16")
    bf16 = subprocess.run(
        [*cmd, "measure-bf16", "--store", str(store), "--name", "smoke"],
        capture_output=True,
        text=True,
    )
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert bf16.returncode == 2 and "no native bf16" in bf16.stderr
        return
    assert bf16.returncode == 0, bf16.stderr
    assert "smoke v3: v2 + bf16 accuracy" in bf16.stdout
    manifest = open_version(store, "smoke").manifest
    record = manifest.precisions["bf16"]
    assert record.runtime.startswith("openvino ") and record.cpu
    assert set(record.accuracy) == set(manifest.spec.domain_names)
    assert all(0 <= a <= 1 for a in record.accuracy.values())
    assert "int8" in manifest.precisions  # carried: v3 has v2's int8 graphs
    served = setup(store, "smoke", runtime="openvino", precision="bf16")
    assert (served.runtime.name, served.runtime.precision) == ("openvino", "bf16")
    probs = predict(Batch(served, "mixed", names, images, [0.0] * len(names)))
    assert all(abs(float(p.sum()) - 1) < 1e-3 for p in probs)


def test_cli_refuses_bad_input_with_a_message(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "training"]
    bad = subprocess.run(
        [*cmd, "train", "--smoke", "--budget", "1.5", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "budget must be in (0, 1]" in bad.stderr
    missing = subprocess.run(
        [*cmd, "inspect", "--store", str(tmp_path), "--name", "none"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "publish a version first" in missing.stderr
