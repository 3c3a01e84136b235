"""The pieces of the method: straight-through switches, the losses, the budget guarantee."""

import pytest
import torch

from model_store import build_model, cost_fraction, filter_costs
from tests.conftest import randomize, tiny_spec
from training.losses import CostTerms, budget_loss, intersection_masks, sharing_loss, union_masks
from training.prune import enforce_budget, export_pruned
from training.switches import Switches, binary_step


def test_binary_step_is_exact_forward_and_straight_through_backward() -> None:
    s = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5], requires_grad=True)
    m = binary_step(s, clip=1.0)
    assert m.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    (m * torch.arange(5.0)).sum().backward()
    assert s.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 0.0]  # zeroed where |s| > clip
    s.grad = None
    binary_step(s, clip=0.0).sum().backward()
    assert s.grad.tolist() == [1.0] * 5


def test_switches_start_all_on() -> None:
    sw = Switches([3, 5], num_domains=2, init=0.01, clip=1.0)
    assert all(bool(m.all()) for m in sw.hard_masks())
    with pytest.raises(ValueError):
        Switches([3], 1, init=0.0, clip=1.0)


def test_union_and_intersection_masks() -> None:
    m = [torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])]
    assert union_masks(m)[0].tolist() == [1.0, 1.0, 0.0]
    assert intersection_masks(m)[0].tolist() == [1.0, 0.0, 0.0]


def test_budget_loss_is_a_hinge() -> None:
    fr = [torch.tensor(0.4), torch.tensor(0.7)]
    assert budget_loss(fr, 0.5).item() == pytest.approx(0.2)


@pytest.mark.parametrize("form", ["union", "intersection", "jaccard"])
def test_sharing_loss_is_zero_when_domains_agree_and_positive_when_they_differ(form: str) -> None:
    spec = tiny_spec()
    terms = CostTerms(spec, "macs", filter_costs(spec, "macs"))
    sizes = list(spec.gated_filters())
    same = [torch.cat([torch.ones(3, n // 2), torch.zeros(3, n - n // 2)], dim=1) for n in sizes]
    apart = [
        torch.stack([torch.roll(m[0], shifts=d * (n // 3)) for d in range(3)])
        for m, n in zip(same, sizes, strict=False)
    ]
    budget = 0.6
    assert sharing_loss(form, terms, same, budget).item() == pytest.approx(0.0, abs=1e-6)
    assert sharing_loss(form, terms, apart, budget).item() > 0.01


def test_union_loss_pushes_filters_that_one_domain_alone_uses() -> None:
    """d(union)/d(m_d) = prod over other domains of (1 - m): only a sole user feels the push."""
    spec = tiny_spec()
    terms = CostTerms(spec, "macs", filter_costs(spec, "macs"))
    sw = Switches(list(spec.gated_filters()), 3, init=0.01, clip=1.0)
    with torch.no_grad():
        for s in sw.scores:
            s[1:, 0] = -0.01  # filter 0: used by domain 0 alone; the rest: by everyone
    sharing_loss("union", terms, sw.all_masks(), 0.3).backward()
    for s in sw.scores:
        assert s.grad[0, 0] > 0 and s.grad[1:, 0].abs().sum() == 0
        assert s.grad[:, 1:].abs().sum() == 0


@pytest.mark.parametrize("unit", ["macs", "params"])
@pytest.mark.parametrize("budget", [0.4, 0.6, 0.9])  # tiny ImageNet layouts: stem ~37%
def test_budget_guarantee_holds_for_every_domain(arch: str, unit: str, budget: float) -> None:
    model = randomize(build_model(tiny_spec(arch=arch)), keep_prob=1.0, seed=2)
    scores = [torch.randn(m.shape) for m in model.gated_masks()]
    pruned, cuts = export_pruned(model, scores, budget, unit)
    for d in range(3):
        masks = [m[d].double() for m in pruned.gated_masks()]
        frac = cost_fraction(pruned.spec, unit, d, masks)
        assert frac.item() <= budget + 1e-12
        cut = cuts[pruned.spec.domain_names[d]]
        assert cut.filters > 0 and cut.cost_trained == pytest.approx(1.0)
        assert cut.cost_exported == pytest.approx(frac.item())


def test_budget_guarantee_removes_lowest_scores_first(arch: str) -> None:
    spec = tiny_spec(num_domains=1, classes=(3,), arch=arch)
    model = randomize(build_model(spec), keep_prob=1.0)
    scores = [
        torch.arange(float(m.shape[1])).unsqueeze(0) + 100 * i
        for i, m in enumerate(model.gated_masks())
    ]
    enforce_budget(model, scores, 0.8, "macs")
    first = model.gated_masks()[0][0]
    off = (first == 0).nonzero().flatten().tolist()
    assert off == list(range(len(off))) and len(off) > 0  # the lowest-score filters went first
    assert bool(model.gated_masks()[-1].all())  # the highest scores were kept


def test_impossible_budget_is_refused() -> None:
    model = randomize(build_model(tiny_spec()), keep_prob=1.0)
    scores = [torch.randn(m.shape) for m in model.gated_masks()]
    with pytest.raises(ValueError, match="every filter off"):
        enforce_budget(model, scores, 0.001, "macs")
