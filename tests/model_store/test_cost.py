"""The cost counter agrees with an independent recount of what a network holds and runs."""

import pytest
import torch

from model_store import (
    build_model,
    cost_fraction,
    domain_cost,
    independent_parameters,
    model_parameters,
    prune_to_union,
    single_domain_parameters,
)
from model_store.nets.cost import filter_costs
from tests.conftest import randomize, tiny_spec
from tests.recount import executed_macs, held_parameters


@pytest.mark.parametrize("keep_prob", [0.0, 0.4, 1.0])
def test_domain_cost_matches_hook_recount(arch: str, keep_prob: float) -> None:
    """Exact where each gated conv is read by an ungated one (basic blocks). A bottleneck's
    conv2 reads gated conv1: its product term is counted as a bound (see cost.py), exact with
    every filter on or off, never below what runs."""
    model = randomize(build_model(tiny_spec(arch=arch)), keep_prob, seed=1)
    exact = arch != "resnet50" or keep_prob in (0.0, 1.0)
    for d in range(3):
        masks = [m[d] for m in model.gated_masks()]
        for unit, recount in (("macs", executed_macs), ("params", held_parameters)):
            counted, held = domain_cost(model.spec, unit, d, masks).item(), recount(model, d)
            assert counted == held if exact else held < counted


def test_bottleneck_bound_is_the_product_gap() -> None:
    """What the counter adds above what a bottleneck runs is exactly, per block,
    9 * side^2 * (k1 K2 + K1 k2 - 2 k1 k2) / 2: the linearised conv2 term, nothing else."""
    model = randomize(build_model(tiny_spec(arch="resnet50")), 0.4, seed=1)
    full = model.spec.full_blocks()
    sides = [8] * 3 + [4] * 4 + [2] * 6 + [1] * 3  # 32 px: stages at 8, 4, 2 and 1 px
    for d in range(3):
        masks = [m[d] for m in model.gated_masks()]
        kept = [int(m.sum()) for m in masks]
        gap = sum(
            9 * side**2 * (k1 * f.gated[1] + f.gated[0] * k2 - 2 * k1 * k2) / 2
            for f, side, k1, k2 in zip(full, sides, kept[::2], kept[1::2], strict=True)
        )
        counted = domain_cost(model.spec, "macs", d, masks).item()
        assert counted - executed_macs(model, d) == pytest.approx(gap, abs=1e-6)


def test_pruned_model_costs_the_same_per_domain(arch: str) -> None:
    model = randomize(build_model(tiny_spec(arch=arch)), 0.4, seed=2)
    pruned = prune_to_union(model)
    for d in range(3):
        for unit in ("macs", "params"):
            full = cost_fraction(model.spec, unit, d, [m[d] for m in model.gated_masks()])
            small = cost_fraction(pruned.spec, unit, d, [m[d] for m in pruned.gated_masks()])
            assert full.item() == pytest.approx(small.item(), rel=1e-12)


def test_model_totals_match_tensors(arch: str) -> None:
    model = randomize(build_model(tiny_spec(arch=arch)), 0.4, seed=3)
    pruned = prune_to_union(model)
    for net in (model, pruned):
        assert model_parameters(net.spec) == sum(p.numel() for p in net.parameters())
    single = build_model(tiny_spec(num_domains=1, classes=(3,), arch=arch))
    spec = tiny_spec(num_domains=2, classes=(3,), arch=arch)
    assert single_domain_parameters(spec) == sum(p.numel() for p in single.parameters())
    assert independent_parameters(spec) == 2 * sum(p.numel() for p in single.parameters())


def test_all_on_costs_exactly_the_baseline_and_is_differentiable(arch: str) -> None:
    spec = tiny_spec(arch=arch)
    masks = [
        torch.ones(len(c), dtype=torch.float64, requires_grad=True)
        for c in filter_costs(spec, "macs")
    ]
    frac = cost_fraction(spec, "macs", 0, masks)
    assert frac.item() == pytest.approx(1.0)
    frac.backward()
    assert all(m.grad is not None and bool((m.grad > 0).all()) for m in masks)


def test_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="cost unit"):
        filter_costs(tiny_spec(), "flops")
