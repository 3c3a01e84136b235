"""Recovery after the masks are final.

Stage 2 gathers each domain's BN running statistics while its masks keep changing, so the
statistics describe a mixture of networks, not the one that is exported. Recovery first
fine-tunes BN affines and heads with masks and convs frozen (the `recover` phase of the
trainer), then re-estimates every domain's running statistics under the final masks here.
"""

from __future__ import annotations

import torch

from model_store import DomainBatchNorm, MultiDomainResNet

from .data import DomainData, centre_crops


@torch.no_grad()
def recalibrate_bn(
    model: MultiDomainResNet,
    data: list[DomainData],
    batches: int,
    batch_size: int,
    seed: int,
) -> None:
    """Every domain's BN running mean/var := the average over `batches` seeded batches of its
    training images, run through the network with its final (stored) masks.

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
        for d, domain in enumerate(data):
            if not len(domain.train):
                continue  # nothing to estimate from: keep what training left
            pre = model.spec.domains[d].preprocess
            for bn in norms:
                bn.running_mean[d].zero_()
                bn.running_var[d].fill_(1.0)
            order = torch.randperm(len(domain.train), generator=generator)
            for k in range(batches):
                idx = order[(k * batch_size) % len(order) :][:batch_size]
                for bn in norms:
                    bn.momentum = 1.0 / (k + 1)  # running value = mean over the batches so far
                model(centre_crops(domain, domain.train.images[idx], pre).to(device), d)
    finally:
        for bn, momentum in zip(norms, saved, strict=True):
            bn.momentum = momentum
        model.train(was_training)
