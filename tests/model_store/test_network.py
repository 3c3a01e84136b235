"""The backbone has the Decathlon ResNet-26 shape and every domain runs through it."""

import pytest
import torch

from model_store import (
    ArtifactError,
    ModelSpec,
    SpecError,
    baseline_cost,
    build_model,
    model_parameters,
)
from model_store.spec import DomainSpec, Preprocess
from tests.conftest import tiny_spec


def _decathlon_spec(size: int) -> ModelSpec:
    pre = Preprocess(resize=size + 8, crop=size, mean=(0.5,) * 3, std=(0.25,) * 3)
    return ModelSpec(
        domains=(DomainSpec("imagenet", tuple(map(str, range(1000))), pre),), input_size=size
    )


def test_reference_size_and_macs() -> None:
    """5.81 M conv weights, 0.853 GMACs at 64x64 and 1.079 at 72x72 (method.md's count)."""
    spec = _decathlon_spec(64)
    model = build_model(spec)
    conv = sum(p.numel() for p in model.shared_parameters())
    assert conv == 5_806_944
    head = 256 * 1000
    assert baseline_cost(spec, "macs", 0) - head == 852_885_504  # 0.853 G
    assert baseline_cost(_decathlon_spec(72), "macs", 0) - head == 1_079_433_216  # 1.079 G
    assert model_parameters(spec) == sum(p.numel() for p in model.parameters())


def test_stage_resolutions_are_32_16_8_for_64px() -> None:
    model = build_model(_decathlon_spec(64)).eval()
    sizes = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64), 0)
    assert sizes == [32] * 4 + [16] * 4 + [8] * 4


@pytest.mark.parametrize("domain", [0, 1, 2])
def test_every_domain_forward_and_backward(domain: int) -> None:
    spec = tiny_spec()
    model = build_model(spec)
    logits = model(torch.randn(4, 3, 16, 16), domain)
    assert logits.shape == (4, len(spec.domains[domain].labels))
    logits.sum().backward()
    assert model.heads[domain].weight.grad is not None
    assert all(h.weight.grad is None for i, h in enumerate(model.heads) if i != domain)


def test_training_updates_only_own_domain_bn_statistics() -> None:
    model = build_model(tiny_spec()).train()
    before = model.stem_bn.running_mean.clone()
    model(torch.randn(8, 3, 16, 16) + 2.0, 1)
    changed = (model.stem_bn.running_mean != before).any(dim=1)
    assert changed.tolist() == [False, True, False]


@pytest.mark.parametrize(
    "kwargs",
    [{"width": 0}, {"input_size": 20}, {"arch": "resnet50"}, {"mid_channels": (1,) * 11}],
)
def test_bad_specs_are_refused(kwargs: dict) -> None:
    base = tiny_spec()
    with pytest.raises(SpecError):
        ModelSpec(**{"domains": base.domains, "width": 0.25, "input_size": 16, **kwargs})


def test_spec_round_trips_through_dict() -> None:
    spec = tiny_spec()
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError):
        ModelSpec.from_dict({"domains": []})
    assert issubclass(ArtifactError, RuntimeError)
