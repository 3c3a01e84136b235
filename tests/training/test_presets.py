"""The benchmark presets, each one command: trained end to end (train -> publish -> load) on tiny
generated folders in their datasets' layouts, from random weights in the format a user brings
(torchvision's ResNet-50 state dict; our own single-domain ResNet-26 for the Decathlon), with
only width, resolution and length shrunk. And the report's Visual Decathlon score against the
published baseline whenever the domains are the Decathlon's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save_file

from model_store import (
    DomainBatchNorm,
    DomainSpec,
    ModelSpec,
    Preprocess,
    build_model,
    load_version,
    open_version,
)
from training.cli import PRESETS, main
from training.config import TrainConfig
from training.data import IMAGENET_MEAN, IMAGENET_STD
from training.evaluate import accuracy
from training.report import DECATHLON_BASELINE, Row, render_markdown
from training.sources import load_domain

from .test_sources import decathlon_replica

pytestmark = pytest.mark.slow  # end-to-end: make test runs it, make test-fast does not

# What the tests shrink; everything else is the preset's own.
TINY = {
    "width": 0.125,
    "resize": 40,
    "crop": 32,
    "batch_size": 4,
    "epochs": 1.0,
    "min_bap_steps": 0,
    "recovery_epochs": 0.5,
    "bn_recalibration_batches": 1,
    "eval_batch_size": 8,
    "precision": "fp32",
    "workers": 1,
}


def sketch_tree(root: Path, datasets: list[str]) -> None:
    """`root/<dataset>/{train,test}/<class>/*.jpg`, two classes, 3 + 1 photos each."""
    rng = np.random.default_rng(0)
    for dataset in datasets:
        for split, count in (("train", 3), ("test", 1)):
            for label in ("a", "b"):
                folder = root / dataset / split / label
                folder.mkdir(parents=True)
                for i in range(count):
                    pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
                    img = Image.fromarray(pixels).resize((64, 48), Image.Resampling.BILINEAR)
                    img.save(folder / f"{i}.jpg")


def torchvision_file(spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    """A random ResNet state dict in torchvision's format at the spec's width: torchvision's
    key names, 1-D BN tensors with step counters, an ImageNet fc; saved as torch.save does."""
    torch.manual_seed(0)
    model = build_model(spec)
    norms = {n for n, m in model.named_modules() if isinstance(m, DomainBatchNorm)}
    masks = {mask for _, _, mask, _ in model.gate_names()}
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        module = key.rsplit(".", 1)[0]
        if key.startswith("heads.") or key in masks:
            continue
        if module in norms:
            state[key] = value[0].clone().uniform_(0.5, 1.5)  # not our BN's initial values
            state[f"{module}.num_batches_tracked"] = torch.tensor(100)
        else:
            state[key] = value.clone()
    state["fc.weight"] = torch.randn(1000, spec.feature_channels)
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, path)
    return state


def preset_run(preset: str, tmp_path: Path, data_root: Path, *flags: str) -> tuple[Path, dict]:
    """`python -m training train` on the preset with the TINY overrides written into a copy."""
    config = {**json.loads((PRESETS / preset).read_text()), **TINY}
    path = tmp_path / preset
    path.write_text(json.dumps(config))
    store = tmp_path / "store"
    argv = ["train", "--config", str(path), "--data-root", str(data_root), "--store", str(store)]
    argv += ["--run-dir", str(tmp_path / "run"), "--quiet", "--force", *flags]
    assert main(argv) == 0
    return store, config


def check_published(store: Path, name: str, resize: int, crop: int) -> None:
    """The published version loads; each domain is served with ImageNet's statistics and the
    preset's cut, and measures on its test folder what the manifest says it did."""
    manifest, model = load_version(store, name)
    assert manifest.training["data"]["normalize"] == "imagenet"
    for d, spec in enumerate(manifest.spec.domains):
        pre = spec.preprocess
        assert (pre.resize, pre.crop, pre.mean, pre.std) == (
            resize,
            crop,
            IMAGENET_MEAN,
            IMAGENET_STD,
        )
        data = load_domain(manifest.sources[spec.name], resize, crop)
        measured = round(accuracy(model, data, workers=0), 6)
        assert measured == manifest.domains[spec.name].accuracy, d


def test_imagenet_to_sketch_preset_end_to_end(tmp_path: Path) -> None:
    """ResNet-50 from a torchvision-format file, the five datasets in the sketch layout, β 0.5:
    no stage 1 (the file's convs, frozen from the start), RRC + ImageNet statistics."""
    preset = json.loads((PRESETS / "imagenet-to-sketch.json").read_text())
    assert (preset["arch"], preset["budget"], len(preset["domains"])) == ("resnet50", 0.5, 5)
    datasets = [d["dataset"] for d in preset["domains"]]
    sketch_tree(tmp_path / "data", datasets)
    pre = Preprocess(TINY["resize"], TINY["crop"], IMAGENET_MEAN, IMAGENET_STD)
    spec = ModelSpec(
        domains=(DomainSpec("imagenet", ("a", "b"), pre),),
        width=TINY["width"],
        input_size=TINY["crop"],
        arch="resnet50",
    )
    weights = tmp_path / "resnet50.pth"
    state = torchvision_file(spec, weights)
    store, _ = preset_run(
        "imagenet-to-sketch.json", tmp_path, tmp_path / "data", "--pretrained", str(weights)
    )
    manifest, _ = load_version(store, "imagenet-to-sketch")
    assert manifest.training["data"]["augment"] == "random_resized_crop"
    assert manifest.training["pretrained"]["keys"] == "torchvision"
    assert manifest.spec.domain_names == ("cubs", "cars", "flowers", "wikiart", "sketch")
    stage1 = TrainConfig.from_record(manifest.training["config"]).stage1_epochs
    assert stage1 == 0.0  # convs frozen from the start: the unpruned backbone is the file's
    kept = load(open_version(store, "imagenet-to-sketch").read("backbone.safetensors"))
    assert torch.equal(kept["layer3.2.conv2.weight"], state["layer3.2.conv2.weight"])
    check_published(store, "imagenet-to-sketch", TINY["resize"], TINY["crop"])


def test_decathlon_preset_end_to_end(tmp_path: Path) -> None:
    """The Decathlon ResNet-26 from a single-domain ImageNet network in our layout (its BN
    starts every domain's), the ten datasets in the Decathlon layout, 72/64 px in the preset."""
    preset = json.loads((PRESETS / "decathlon.json").read_text())
    names = [d["name"] for d in preset["domains"]]
    assert set(names) == set(DECATHLON_BASELINE) and (preset["resize"], preset["crop"]) == (72, 64)
    for name in names:
        decathlon_replica(tmp_path / "data", relative_to_data=False, dataset=name)
    pre = Preprocess(TINY["resize"], TINY["crop"], IMAGENET_MEAN, IMAGENET_STD)
    spec = ModelSpec(
        domains=(DomainSpec("imagenet", tuple(f"c{i}" for i in range(10)), pre),),
        width=TINY["width"],
        input_size=TINY["crop"],
    )
    torch.manual_seed(0)
    source = build_model(spec)
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, DomainBatchNorm):
                m.running_var.uniform_(0.5, 2.0)
    backbone = tmp_path / "resnet26-imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(backbone))
    store, _ = preset_run(
        "decathlon.json", tmp_path, tmp_path / "data", "--backbone", str(backbone)
    )
    manifest, _ = load_version(store, "decathlon")
    assert manifest.spec.domain_names == tuple(names)
    assert manifest.training["data"]["augment"] == "crop_flip"
    check_published(store, "decathlon", TINY["resize"], TINY["crop"])


def test_the_report_scores_decathlon_domains_against_the_published_baseline() -> None:
    names = list(DECATHLON_BASELINE)

    def row(method: str, accuracy: dict[str, float]) -> Row:
        ones = dict.fromkeys(accuracy, 1)
        return Row(method, None, accuracy, ones, ones, dict.fromkeys(accuracy, 1.0), 1.0, 1)

    published = {n: DECATHLON_BASELINE[n] / 100 for n in names}
    ours = row("(1) independent fine-tuned models", {n: 0.5 for n in names})
    text = render_markdown([ours, row("(4) BAP β=0.5", published)], TrainConfig(), 1.0, 0.0)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert "| S | S (Decathlon baseline) |" in header
    bap = next(line for line in text.splitlines() if line.startswith("| (4)"))
    assert "| 2500 |" in bap  # the baseline's own accuracies score 250 a domain
    plain = render_markdown([row("(1) x", {"a": 0.5, "b": 0.5})] * 2, TrainConfig(), 1.0, 0.0)
    assert "Decathlon baseline" not in plain
