"""Export: enforce the budget on every domain, then remove the filters no domain uses.

The hinge losses push domains under the budget but do not promise it. Before publishing, a
domain still over budget loses its lowest-score active filters until it fits, so a published
model never exceeds the user's budget, in the unit it was trained with.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from model_store import MultiDomainResNet, baseline_cost, domain_cost, filter_costs, prune_to_union

log = logging.getLogger(__name__)


@torch.no_grad()
def enforce_budget(
    model: MultiDomainResNet, scores: list[Tensor], budget: float, unit: str
) -> dict[str, int]:
    """Switch off each over-budget domain's lowest-score filters in place; returns how many
    filters were switched off per domain."""
    spec, costs = model.spec, filter_costs(model.spec, unit)
    switched_off = {}
    for d, name in enumerate(spec.domain_names):
        masks = [b.masks[d] for b in model.blocks]
        over = domain_cost(spec, unit, d, masks, costs).item() - budget * baseline_cost(
            spec, unit, d
        )
        count = 0
        if over > 0:
            active = [
                (float(s[d, f]), b, f)
                for b, s in enumerate(scores)
                for f in masks[b].nonzero().flatten().tolist()
            ]
            for _, b, f in sorted(active):
                if over <= 0:
                    break
                masks[b][f] = 0.0
                over -= float(costs[b][f])
                count += 1
            if over > 0:
                raise ValueError(
                    f"budget {budget} is below what {name} costs with every filter off"
                )
            log.info("budget guarantee: domain=%s switched_off=%d", name, count)
        switched_off[name] = count
    return switched_off


def export_pruned(
    model: MultiDomainResNet, scores: list[Tensor], budget: float, unit: str
) -> tuple[MultiDomainResNet, dict[str, int]]:
    """The model to publish: budget enforced on the stored masks, then unused filters removed."""
    switched_off = enforce_budget(model, scores, budget, unit)
    return prune_to_union(model).eval(), switched_off
