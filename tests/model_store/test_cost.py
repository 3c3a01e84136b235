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
from model_store.cost import filter_costs
from tests.conftest import randomize, tiny_spec
from tests.recount import executed_macs, held_parameters


@pytest.mark.parametrize("keep_prob", [0.0, 0.4, 1.0])
def test_domain_cost_matches_hook_recount(keep_prob: float) -> None:
    model = randomize(build_model(tiny_spec()), keep_prob, seed=1)
    for d in range(3):
        masks = [b.masks[d] for b in model.blocks]
        assert domain_cost(model.spec, "macs", d, masks).item() == executed_macs(model, d)
        assert domain_cost(model.spec, "params", d, masks).item() == held_parameters(model, d)


def test_pruned_model_costs_the_same_per_domain() -> None:
    model = randomize(build_model(tiny_spec()), 0.4, seed=2)
    pruned = prune_to_union(model)
    for d in range(3):
        for unit in ("macs", "params"):
            full = cost_fraction(model.spec, unit, d, [b.masks[d] for b in model.blocks])
            small = cost_fraction(pruned.spec, unit, d, [b.masks[d] for b in pruned.blocks])
            assert full.item() == pytest.approx(small.item(), rel=1e-12)


def test_model_totals_match_tensors() -> None:
    model = randomize(build_model(tiny_spec()), 0.4, seed=3)
    pruned = prune_to_union(model)
    for net in (model, pruned):
        assert model_parameters(net.spec) == sum(p.numel() for p in net.parameters())
    single = build_model(tiny_spec(num_domains=1, classes=(3,)))
    spec = tiny_spec(num_domains=2, classes=(3,))
    assert single_domain_parameters(spec) == sum(p.numel() for p in single.parameters())
    assert independent_parameters(spec) == 2 * sum(p.numel() for p in single.parameters())


def test_all_on_costs_exactly_the_baseline_and_is_differentiable() -> None:
    spec = tiny_spec()
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
