"""Physically remove filters: build a smaller network holding only chosen filters and domains.

Removing filter f of a block's gated conv removes row f of conv1, column f of conv2, channel f
of every domain's BN1 and of every domain's mask. Training prunes to the union of the domains'
masks; serving slices one domain's own active filters to run only those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from .network import MultiDomainResNet, build_model


def union_filters(model: MultiDomainResNet) -> list[Tensor]:
    """Per block, the filters at least one domain uses (sorted indices)."""
    return [(m > 0).any(dim=0).nonzero().flatten() for m in model.gated_masks()]


def domain_filters(model: MultiDomainResNet, domain: int) -> list[Tensor]:
    """Per block, the filters this domain uses (sorted indices)."""
    return [(m[domain] > 0).nonzero().flatten() for m in model.gated_masks()]


@torch.no_grad()
def slice_network(
    model: MultiDomainResNet, keep: Sequence[Tensor], domains: Sequence[int] | None = None
) -> MultiDomainResNet:
    """A new network with only `keep[i]` filters in block i and only `domains`, same outputs.

    For every kept domain and input, its logits equal the source network's (the masks of removed
    filters were zero for that domain, or the caller asked for a network that drops them).
    """
    domains = list(range(len(model.spec.domains))) if domains is None else list(domains)
    if len(keep) != len(model.blocks):
        raise ValueError(f"keep needs one index tensor per block ({len(model.blocks)})")
    rows = torch.tensor(domains, dtype=torch.long)
    spec = replace(
        model.spec,
        domains=tuple(model.spec.domains[d] for d in domains),
        mid_channels=tuple(len(k) for k in keep),
    )
    out = build_model(spec).to(next(model.parameters()).device)
    src = model.state_dict()
    new: dict[str, Tensor] = {}
    for name in out.state_dict():
        value = src[name] if not name.startswith("heads.") else None
        parts = name.split(".")
        if parts[0] == "heads":  # heads.<j>.<weight|bias> comes from the j-th kept domain
            value = src[f"heads.{domains[int(parts[1])]}.{parts[2]}"]
        elif parts[0] == "blocks":
            k = keep[int(parts[1])]
            if parts[2] == "conv1":
                value = value[k]
            elif parts[2] == "conv2":
                value = value[:, k]
            elif parts[2] in ("bn1", "masks"):
                value = value[rows][:, k]
            else:  # bn2
                value = value[rows]
        elif parts[0] != "stem":  # stem_bn, head_bn: one row per domain
            value = value[rows]
        new[name] = value.clone()
    out.load_state_dict(new, strict=True)
    return out.train(model.training)


@torch.no_grad()
def pad_filters(model: MultiDomainResNet, multiple: int) -> MultiDomainResNet:
    """The same network with each block's filter count rounded up to `multiple` (a block with
    none keeps none); every added filter outputs exactly zero for every domain (zero conv row
    and column, zero BN scale and shift, zero mask), so every output is the same (up to a
    kernel's summation order).

    Why: a compiled runtime's fast convolution kernels want channel counts in whole SIMD blocks,
    and pruning leaves arbitrary counts (see graphs.CHANNEL_BLOCK).
    """
    padded = tuple(-(-b.mid_channels // multiple) * multiple for b in model.spec.blocks())
    out = build_model(replace(model.spec, mid_channels=padded)).to(next(model.parameters()).device)
    new = {}
    for name, target in out.state_dict().items():
        value = model.state_dict()[name]
        if value.shape != target.shape:  # a block's conv1, conv2, bn1 or masks: zero-extend
            grown = torch.zeros_like(target)
            grown[tuple(slice(0, n) for n in value.shape)] = value
            value = grown
        new[name] = value.clone()
    out.load_state_dict(new, strict=True)
    return out.train(model.training)


def prune_to_union(model: MultiDomainResNet) -> MultiDomainResNet:
    """Remove every filter that no domain uses; all domains kept."""
    return slice_network(model, union_filters(model))


def domain_view(model: MultiDomainResNet, domain: int) -> MultiDomainResNet:
    """A one-domain network computing only that domain's active filters."""
    return slice_network(model, domain_filters(model, domain), [domain])
