"""Export: enforce the budget on every domain, then remove the filters no domain uses.

The hinge losses push domains under the budget but do not promise it. Before publishing, a
domain still over budget loses its lowest-score active filters until it fits, so a published
model never exceeds the user's budget, in the unit it was trained with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from model_store import MultiDomainResNet, baseline_cost, domain_cost, filter_costs, prune_to_union

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportCut:
    """What the budget guarantee did to one domain: filters switched off and its cost fraction
    (of the single-domain network) as training left it and as exported."""

    filters: int
    cost_trained: float
    cost_exported: float

    @property
    def cost_cut(self) -> float:
        return self.cost_trained - self.cost_exported


@torch.no_grad()
def enforce_budget(
    model: MultiDomainResNet,
    scores: list[Tensor],
    budget: float,
    unit: str,
    domains: Sequence[int] | None = None,
) -> dict[str, ExportCut]:
    """Switch off each over-budget domain's lowest-score filters in place (only `domains`, if
    given); returns per domain how many filters that took and the cost before and after."""
    spec, costs = model.spec, filter_costs(model.spec, unit)
    cuts = {}
    for d, name in enumerate(spec.domain_names):
        if domains is not None and d not in domains:
            continue
        masks = [m[d] for m in model.gated_masks()]
        base = baseline_cost(spec, unit, d)
        trained = domain_cost(spec, unit, d, masks, costs).item()
        over = trained - budget * base
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
        exported = domain_cost(spec, unit, d, masks, costs).item()
        cuts[name] = ExportCut(count, trained / base, exported / base)
    return cuts


def export_pruned(
    model: MultiDomainResNet, scores: list[Tensor], budget: float, unit: str
) -> tuple[MultiDomainResNet, dict[str, ExportCut]]:
    """The model to publish: budget enforced on the stored masks, then unused filters removed."""
    cuts = enforce_budget(model, scores, budget, unit)
    return prune_to_union(model).eval(), cuts
