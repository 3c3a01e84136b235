"""The BAP objective: cross-entropy per domain + budget hinge per domain + a sharing loss.

Cost fractions come from `model_store.nets.cost`, the same counter the reports and the server use.
The sharing forms (our choices, configurable):
- union: max(0, c(union) - budget): the pruned model itself must fit the budget.
- intersection: mean over domains of c(domain) - c(intersection): cost outside the common core.
- jaccard: 1 - c(intersection) / c(union).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from model_store import ModelSpec, cost_fraction, shared_fraction


def union_masks(masks: Sequence[Tensor]) -> list[Tensor]:
    """u = 1 - prod_d (1 - m_d) per block; stays differentiable through straight-through masks."""
    return [1 - torch.prod(1 - m, dim=0) for m in masks]


def intersection_masks(masks: Sequence[Tensor]) -> list[Tensor]:
    return [torch.prod(m, dim=0) for m in masks]


class CostTerms:
    """Differentiable cost fractions for one spec and unit, with the per-filter costs cached."""

    def __init__(self, spec: ModelSpec, unit: str, costs: Sequence[Tensor]):
        self.spec, self.unit = spec, unit
        self.costs = [c.to(torch.float32) for c in costs]

    def domain(self, domain: int, masks: Sequence[Tensor]) -> Tensor:
        return cost_fraction(self.spec, self.unit, domain, masks, self.costs)

    def shared(self, masks: Sequence[Tensor]) -> Tensor:
        """Cost fraction of a model-wide mask (union or intersection)."""
        return shared_fraction(self.spec, self.unit, masks, self.costs)


def budget_loss(fractions: Sequence[Tensor], budget: float) -> Tensor:
    """sum_d max(0, c_d - budget)."""
    return sum(torch.relu(f - budget) for f in fractions)


def sharing_loss(form: str, terms: CostTerms, all_masks: Sequence[Tensor], budget: float) -> Tensor:
    """How far the domains are from using one common subset of filters (see module doc)."""
    if form == "none":
        return torch.zeros(())
    union = terms.shared(union_masks(all_masks))
    if form == "union":
        return torch.relu(union - budget)
    inter = terms.shared(intersection_masks(all_masks))
    if form == "intersection":
        n = len(terms.spec.domains)
        per_domain = [terms.domain(d, [m[d] for m in all_masks]) for d in range(n)]
        return sum(per_domain) / n - inter
    if form == "jaccard":
        return 1 - inter / union
    raise ValueError(f"unknown sharing form {form!r}")


DUAL_REFERENCE_STEPS = 200  # stage-2 runs at least this long take dual_lr as it is


def run_length_scale(steps: int) -> float:
    """What a run of `steps` stage-2 steps multiplies dual_lr by, so that a short run reaches
    the budget by training too (not by the export's blind cut).

    A multiplier grows by about lr * violation per step and the scores integrate it, so how far
    the scores move by the end grows with the square of the run's length: a 15-step run on a
    small folder moved no switch at all. Runs shorter than DUAL_REFERENCE_STEPS therefore step
    their multipliers (reference / steps)^2 times faster; longer runs are unchanged.
    """
    return max(1.0, DUAL_REFERENCE_STEPS / max(steps, 1)) ** 2


class DualMultipliers:
    """Lagrange multipliers for the constraints c_d <= budget (each domain) and, with the union
    form, c(union) <= budget; updated by dual ascent after every step.

    A fixed hinge weight pushes every filter of a block down at the same rate until the budget
    is met, and momentum carries the scores past it. A multiplier instead rises only while a
    constraint is violated and falls back once it holds, so filters leave in order of how little
    the cross-entropy needs them per unit of cost, and the cost settles at the budget.
    """

    def __init__(self, num_domains: int, budget: float, lr: float, steps: int):
        self.budget, self.lr = budget, lr * run_length_scale(steps)
        self.values = torch.zeros(num_domains + 1)  # last entry: the union constraint

    def penalty(self, fractions: Sequence[Tensor], union: Tensor | None) -> Tensor:
        """sum_d lambda_d (c_d - budget) [+ lambda_u (c_union - budget)]."""
        terms = [
            lam * (f - self.budget) for lam, f in zip(self.values[:-1], fractions, strict=True)
        ]
        if union is not None:
            terms.append(self.values[-1] * (union - self.budget))
        return sum(terms)

    @torch.no_grad()
    def update(self, fractions: Sequence[float], union: float | None) -> None:
        violation = torch.tensor([*fractions, union if union is not None else self.budget])
        self.values = torch.clamp(self.values + self.lr * (violation - self.budget), min=0.0)
