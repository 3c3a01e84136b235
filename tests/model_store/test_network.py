"""Every architecture has its reference shape and size, and every domain runs through it."""

import json

import pytest
import torch

from model_store import (
    ARCH_BUILDERS,
    ModelSpec,
    SpecError,
    baseline_cost,
    build_model,
    model_parameters,
    prune_to_union,
)
from model_store.nets.layers import DomainBatchNorm
from model_store.spec import ARCHITECTURES, DomainSpec, Preprocess
from tests.conftest import randomize, tiny_input, tiny_spec


def _imagenet_spec(size: int, arch: str = "resnet26_decathlon", width: float = 1.0) -> ModelSpec:
    pre = Preprocess(resize=size + 8, crop=size, mean=(0.5,) * 3, std=(0.25,) * 3)
    return ModelSpec(
        domains=(DomainSpec("imagenet", tuple(map(str, range(1000))), pre),),
        width=width,
        input_size=size,
        arch=arch,
    )


def test_reference_size_and_macs() -> None:
    """5.81 M conv weights, 0.853 GMACs at 64x64 and 1.079 at 72x72 (method.md's count)."""
    spec = _imagenet_spec(64)
    model = build_model(spec)
    conv = sum(p.numel() for p in model.shared_parameters())
    assert conv == 5_806_944
    head = 256 * 1000
    assert baseline_cost(spec, "macs", 0) - head == 852_885_504  # 0.853 G
    assert baseline_cost(_imagenet_spec(72), "macs", 0) - head == 1_079_433_216  # 1.079 G
    assert model_parameters(spec) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("arch", "macs", "params"),
    [
        ("resnet18", 1_814_073_344, 11_689_512),
        ("resnet34", 3_663_761_408, 21_797_672),
        ("resnet50", 4_089_184_256, 25_557_032),
    ],
)
def test_imagenet_resnets_cost_what_torchvision_reports(arch: str, macs: int, params: int) -> None:
    """At 224 px with a 1000-class head, from the spec alone (no weights built): torchvision's
    1.81 / 3.66 / 4.09 GFLOPS (its multiply-adds) and its parameter counts, to the unit."""
    spec = _imagenet_spec(224, arch)
    assert baseline_cost(spec, "macs", 0) == macs
    assert baseline_cost(spec, "params", 0) == params
    assert model_parameters(spec) == params  # one domain: its BN affines are the only BNs


def test_every_registered_arch_is_buildable_and_described() -> None:
    assert set(ARCH_BUILDERS) == set(ARCHITECTURES)


def test_stage_resolutions(arch: str) -> None:
    """Decathlon: 32/16/8 at 64 px (stride 1 stem). torchvision: the stem halves twice, so
    stages run at 16/8/4/2 at 64 px (56/28/14/7 at 224)."""
    size = 64
    model = build_model(_imagenet_spec(size, arch, width=0.125)).eval()
    sizes = []
    for _, block in model.named_blocks():
        block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size), 0)
    depths = ARCHITECTURES[arch].depths
    first = 32 if arch == "resnet26_decathlon" else 16
    assert sizes == [first >> s for s, n in enumerate(depths) for _ in range(n)]


@pytest.mark.parametrize(
    ("arch", "gated", "ungated"),
    [
        ("resnet26_decathlon", {"conv1"}, {"stem", "conv2"}),
        ("resnet18", {"conv1"}, {"conv1", "conv2", "downsample.0"}),
        ("resnet50", {"conv1", "conv2"}, {"conv1", "conv3", "downsample.0"}),
    ],
)
def test_what_is_gated(arch: str, gated: set[str], ungated: set[str]) -> None:
    """The gated convs are each block's inner convs; the stem, the convs that write into the
    residual stream and the downsample convs are not (names within a block, or the stem's)."""
    model = build_model(tiny_spec(arch=arch))
    gates = {conv for conv, _, _, _ in model.gate_names()}
    convs = {n[: -len(".weight")] for n, p in model.named_parameters() if p.dim() == 4}
    blocks = len(list(model.named_blocks()))
    assert len(gates) == blocks * ARCHITECTURES[arch].gates_per_block
    assert {g.split(".", 2)[-1] for g in gates} == gated
    assert {c.split(".", 2)[-1] for c in convs - gates} == ungated
    masks = [n for n, _ in model.named_buffers() if n in {m for _, _, m, _ in model.gate_names()}]
    assert masks == list(model.spec.mask_keys())


def test_every_domain_forward_and_backward(arch: str) -> None:
    spec = tiny_spec(arch=arch)
    model = build_model(spec)
    for domain in range(len(spec.domains)):
        model.zero_grad(set_to_none=True)
        logits = model(tiny_input(spec, 4), domain)
        assert logits.shape == (4, len(spec.domains[domain].labels))
        logits.sum().backward()
        assert model.heads[domain].weight.grad is not None
        assert all(h.weight.grad is None for i, h in enumerate(model.heads) if i != domain)


def test_training_updates_only_own_domain_bn_statistics(arch: str) -> None:
    spec = tiny_spec(arch=arch)
    model = build_model(spec).train()
    norms = [m for m in model.modules() if isinstance(m, DomainBatchNorm)]
    before = [bn.running_mean.clone() for bn in norms]
    model(tiny_input(spec, 8) + 2.0, 1)
    for bn, old in zip(norms, before, strict=True):
        assert not (bn.running_mean != old)[[0, 2]].any()
    assert (norms[0].running_mean != before[0])[1].all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0},
        {"input_size": 20},
        {"arch": "resnet101"},
        {"mid_channels": (1,) * 11},
        {"arch": "resnet18", "input_size": 48},  # five halvings: a multiple of 32
        {"arch": "resnet50", "mid_channels": (1,) * 16},  # two gated convs per bottleneck
    ],
)
def test_bad_specs_are_refused(kwargs: dict) -> None:
    base = tiny_spec()
    size = kwargs.get("input_size", 16 if "arch" not in kwargs else 32)
    pre = Preprocess(resize=size, crop=size, mean=(0.5,) * 3, std=(0.25,) * 3)
    domains = tuple(DomainSpec(d.name, d.labels, pre) for d in base.domains)
    with pytest.raises(SpecError):
        ModelSpec(**{"domains": domains, "width": 0.25, "input_size": size, **kwargs})


def test_spec_round_trips_through_dict(arch: str) -> None:
    """Full and pruned specs of every architecture survive JSON unchanged."""
    model = randomize(build_model(tiny_spec(arch=arch)), 0.5)
    for spec in (model.spec, prune_to_union(model).spec):
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(SpecError):
        ModelSpec.from_dict({"domains": []})
