"""Recovery after the masks are final.

Dual ascent stops each domain somewhat under the budget (the multipliers fall back only after
the scores have crossed it; 0.32-0.44 at a budget of 0.5 on the bundled run), leaving compute
the user paid for unused. `fill_to_budget` hands it back: each domain switches on again the
union filters it had dropped, highest score first, while it stays within the budget. The
filters come from the union, so the pruned model stores no more than before.

Stage 2 gathers each domain's BN running statistics while its masks keep changing, so the
statistics describe a mixture of networks, not the one that is exported. Recovery first
fine-tunes BN affines and heads with masks and convs frozen (the `recover` phase of the
trainer), then re-estimates every domain's running statistics under the final masks here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from model_store import DomainBatchNorm, MultiDomainResNet, baseline_cost, domain_cost, filter_costs

from .data import EVAL, DomainData, Work, load_batches, normalized

log = logging.getLogger(__name__)


@torch.no_grad()
def fill_to_budget(
    model: MultiDomainResNet, scores: list[Tensor], budget: float, unit: str
) -> dict[str, int]:
    """Switch each domain's dropped union filters back on in its stored masks, highest score
    first, while its cost stays <= budget; returns how many each domain regained.

    Deterministic in (masks, scores), so a resumed run repeats it exactly."""
    spec, costs = model.spec, filter_costs(model.spec, unit)
    union = [m.amax(dim=0) > 0 for m in model.gated_masks()]
    regained = {}
    for d, name in enumerate(spec.domain_names):
        masks = [m[d] for m in model.gated_masks()]
        used = domain_cost(spec, unit, d, masks, costs).item()
        room = budget * baseline_cost(spec, unit, d) - used
        candidates = sorted(
            (
                (-float(scores[b][d, f]), b, f)
                for b in range(len(masks))
                for f in (union[b] & (masks[b] == 0)).nonzero().flatten().tolist()
            ),
        )
        count = 0
        for _, b, f in candidates:
            if float(costs[b][f]) <= room:
                masks[b][f] = 1.0
                room -= float(costs[b][f])
                count += 1
        regained[name] = count
    log.info("fill to budget: %s", " ".join(f"{k}=+{v}" for k, v in regained.items()))
    return regained


@torch.no_grad()
def recalibrate_bn(
    model: MultiDomainResNet,
    data: list[DomainData],
    batches: int,
    batch_size: int,
    seed: int,
    indices: Sequence[int] | None = None,
    progress: tqdm | None = None,
    workers: int | None = None,
) -> None:
    """Every domain's BN running mean/var := the average over `batches` seeded batches of its
    training images (cut as served), run through the network with its final (stored) masks.
    `indices`: the network's domain number of each `data` entry (default: data[d] is domain d);
    `progress`: a bar advanced once a batch (at 224 px this takes minutes); `workers`: loader
    processes for domains read from files (see `training.data.load_batches`).

    Deterministic for a seed, so a resumed or repeated call gives the same statistics.
    """
    if batches <= 0:
        return
    norms = [m for m in model.modules() if isinstance(m, DomainBatchNorm)]
    saved = [bn.momentum for bn in norms]
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    try:
        numbers = range(len(data)) if indices is None else indices
        for d, domain in zip(numbers, data, strict=True):
            if not len(domain.train):
                continue  # nothing to estimate from: keep what training left
            pre = model.spec.domains[d].preprocess
            for bn in norms:
                bn.running_mean[d].zero_()
                bn.running_var[d].fill_(1.0)
            order = torch.randperm(len(domain.train), generator=generator)
            works = (
                Work(0, "train", order[(k * batch_size) % len(order) :][:batch_size], EVAL)
                for k in range(batches)
            )
            for k, (pixels, _) in enumerate(load_batches([domain], works, workers)):
                for bn in norms:
                    bn.momentum = 1.0 / (k + 1)  # running value = mean over the batches so far
                model(normalized(pixels, pre).to(device), d)
                if progress is not None:
                    progress.update(1)
    finally:
        for bn, momentum in zip(norms, saved, strict=True):
            bn.momentum = momentum
        model.train(was_training)
