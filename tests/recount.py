"""An independent recount of a network's cost: forward hooks and parameter tensors, no formulas.

The product's counter (model_store.nets.cost) computes figures from the spec; these count what a
loaded network actually holds and executes, so a test can compare the two.
"""

from __future__ import annotations

import torch
from torch import nn

from model_store import MultiDomainResNet, domain_view


def executed_macs(model: MultiDomainResNet, domain: int) -> int:
    """MACs of every conv and linear layer that runs for one image of `domain`'s own view."""
    view = domain_view(model, domain).eval()
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * module.in_channels * k
        else:
            total += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in view.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        size = model.spec.input_size
        view(torch.zeros(1, 3, size, size), 0)
    for h in handles:
        h.remove()
    return total


def held_parameters(model: MultiDomainResNet, domain: int) -> int:
    """Parameters of `domain`'s own view: conv weights, its BN affines, its head."""
    return sum(p.numel() for p in domain_view(model, domain).parameters())
