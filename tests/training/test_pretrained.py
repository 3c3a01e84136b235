"""Pretrained weights from a local torchvision or timm state dict: loaded key for key, refused
with the first key that does not fit, and checked against torchvision's own ResNets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model_store import ArtifactError, DomainBatchNorm, ModelSpec, build_model
from tests.conftest import tiny_spec
from tests.torchvision_reference import import_torchvision
from training.pretrained import load_pretrained

SIZE = 64


def _reference(arch: str) -> torch.nn.Module:
    """torchvision's model with random weights and random BN statistics (eval mode)."""
    models = import_torchvision().models
    net = getattr(models, arch)(num_classes=5)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _spec(arch: str, num_domains: int = 2) -> ModelSpec:
    spec = tiny_spec(num_domains=num_domains, width=1.0, classes=(5,), arch=arch)
    pre = spec.domains[0].preprocess
    pre = type(pre)(resize=SIZE, crop=SIZE, mean=pre.mean, std=pre.std)
    domains = tuple(type(d)(d.name, d.labels, pre) for d in spec.domains)
    return ModelSpec(domains=domains, width=1.0, input_size=SIZE, arch=arch)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_logits_with_every_switch_on(arch: str, tmp_path: Path) -> None:
    """torchvision saves its state dict; ours loads it; with fc as domain 1's head, every
    switch on, the logits equal torchvision's within 1e-5 (every domain's BN is the file's)."""
    torch.manual_seed(0)
    reference = _reference(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)
    ours = build_model(_spec(arch)).eval()
    record = load_pretrained(ours, path)
    with torch.no_grad():
        ours.heads[1].weight.copy_(reference.fc.weight)
        ours.heads[1].bias.copy_(reference.fc.bias)
        x = torch.randn(3, 3, SIZE, SIZE)
        expected = reference(x)
        got = ours(x, 1)
    assert (got - expected).abs().max().item() < 1e-5
    assert record == {
        "file": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "arch": arch,
        "keys": "torchvision",
        "format": "pth",
    }
    for m in ours.modules():  # every domain starts from the file's BN
        if isinstance(m, DomainBatchNorm):
            assert torch.equal(m.running_var[0], m.running_var[1])


def test_timm_safetensors_loads_the_same(tmp_path: Path) -> None:
    """timm ships ResNets as .safetensors with torchvision's key names (plus BN step counters,
    ignored like fc): the same dict in that format gives the same network."""
    torch.manual_seed(1)
    state = _reference("resnet18").state_dict()
    pth, safetensors = tmp_path / "tv.pth", tmp_path / "timm.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))
    a, b = build_model(_spec("resnet18")), build_model(_spec("resnet18"))
    load_pretrained(a, pth)
    assert load_pretrained(b, safetensors)["format"] == "safetensors"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert name.startswith("heads.") or torch.equal(x, y), name


def _reference_state(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return _reference(arch).state_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("layer3.1.conv2.weight"), r"no layer3\.1\.conv2\.weight \(shape"),
        (
            lambda s: s.update({"layer1.0.bn1.weight": torch.ones(32)}),
            r"layer1\.0\.bn1\.weight has shape \(32,\), resnet18 at width 1 needs \(64,\)",
        ),
        (
            lambda s: s.update({"layer4.2.conv1.weight": torch.ones(512, 512, 3, 3)}),
            r"layer4\.2\.conv1\.weight \(shape \(512, 512, 3, 3\)\) is not part of resnet18",
        ),
    ],
)
def test_a_file_that_does_not_fit_is_refused_by_its_first_wrong_key(
    tmp_path: Path, change, message: str
) -> None:
    state = _reference_state("resnet18")
    change(state)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    model = build_model(_spec("resnet18"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ArtifactError, match=message):
        load_pretrained(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_resnet50_file_does_not_fit_resnet18_nor_another_width(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(_reference_state("resnet50"), path)
    with pytest.raises(ArtifactError, match="layer1.0.conv1.weight has shape"):
        load_pretrained(build_model(_spec("resnet18")), path)
    with pytest.raises(ArtifactError, match="resnet50 at width 0.125 needs"):
        load_pretrained(build_model(tiny_spec(arch="resnet50")), path)


def test_pickled_code_and_other_formats_are_refused(tmp_path: Path) -> None:
    """weights_only: a .pth holding anything but tensors is not unpickled."""
    path = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.ones(1), "extra": Path("x")}, path)
    with pytest.raises(ArtifactError, match="holds more than tensors"):
        load_pretrained(build_model(_spec("resnet18")), path)
    other = tmp_path / "w.bin"
    other.write_bytes(b"")
    with pytest.raises(ArtifactError, match=".pth"):
        load_pretrained(build_model(_spec("resnet18")), other)
    with pytest.raises(ArtifactError, match="backbone="):
        load_pretrained(build_model(tiny_spec()), path)


def test_a_run_starts_from_the_file_and_its_manifest_records_it(tmp_path: Path) -> None:
    """`arch` and `pretrained` in the config: the run builds that architecture, starts from the
    file's convs, and the published manifest names the file's SHA-256, arch and key format."""
    from tests.training.conftest import tiny_config
    from training.publish import publish_result
    from training.trainer import train

    state = _reference_state("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    config = tiny_config(
        arch="resnet18",
        width=1.0,
        resize=36,
        crop=32,
        pretrained=str(path),
        pretrain_epochs=0.0,
        epochs=0.5,
        recovery_epochs=0.0,
        bn_recalibration_batches=1,
        budget=0.9,
    )
    result = train(config, tmp_path / "run", progress=False)
    assert result.model.spec.arch == "resnet18"
    key = "layer2.0.downsample.0.weight"  # convs are frozen in stage 2: still the file's
    assert torch.equal(result.model.get_parameter(key), state[key])
    manifest, _ = publish_result(config, result, tmp_path / "store", force=True)
    record = manifest.training["pretrained"]
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (record["arch"], record["keys"], record["format"]) == ("resnet18", "torchvision", "pth")


def test_config_and_flags_name_arch_and_pretrained() -> None:
    from training.cli import build_parser
    from training.config import TrainConfig

    args = build_parser().parse_args(["train", "--arch", "resnet50", "--pretrained", "w.pth"])
    assert (args.arch, args.pretrained) == ("resnet50", Path("w.pth"))
    with pytest.raises(ValueError, match="arch must be one of"):
        TrainConfig(arch="resnet101")
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(backbone="a.safetensors", pretrained="b.pth")
