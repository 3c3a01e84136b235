"""Physically remove filters: build a smaller network holding only chosen filters and domains.

Removing filter f of a gated conv removes its row f, column f of the conv that reads it, channel
f of every domain's BN after it and of every domain's mask (the network names these in
`gate_names`, so one routine slices every architecture). Training prunes to the union of the
domains' masks; serving slices one domain's own active filters to run only those.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from .layers import DomainBatchNorm, MultiDomainResNet
from .network import build_model

BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def union_filters(model: MultiDomainResNet) -> list[Tensor]:
    """Per gated conv, the filters at least one domain uses (sorted indices)."""
    return [(m > 0).any(dim=0).nonzero().flatten() for m in model.gated_masks()]


def domain_filters(model: MultiDomainResNet, domain: int) -> list[Tensor]:
    """Per gated conv, the filters this domain uses (sorted indices)."""
    return [(m[domain] > 0).nonzero().flatten() for m in model.gated_masks()]


def _cuts(model: MultiDomainResNet) -> dict[str, list[tuple[int, int]]]:
    """State-dict name -> the (dim, gate) pairs that slice it: a gated conv's rows, its BN's and
    mask's channels (dim 1: dim 0 is the domain), the reading conv's input columns."""
    cuts: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for gate, (conv, bn, mask, reader) in enumerate(model.gate_names()):
        cuts[f"{conv}.weight"].append((0, gate))
        cuts[f"{reader}.weight"].append((1, gate))
        cuts[mask].append((1, gate))
        for tensor in BN_TENSORS:
            cuts[f"{bn}.{tensor}"].append((1, gate))
    return cuts


def _per_domain(model: MultiDomainResNet) -> set[str]:
    """State-dict names with one row per domain: every BN's tensors and every mask."""
    names = {mask for _, _, mask, _ in model.gate_names()}
    for prefix, module in model.named_modules():
        if isinstance(module, DomainBatchNorm):
            names.update(f"{prefix}.{tensor}" for tensor in BN_TENSORS)
    return names


@torch.no_grad()
def slice_network(
    model: MultiDomainResNet, keep: Sequence[Tensor], domains: Sequence[int] | None = None
) -> MultiDomainResNet:
    """A new network with only `keep[i]` filters in gated conv i and only `domains`, same
    outputs.

    For every kept domain and input, its logits equal the source network's (the masks of removed
    filters were zero for that domain, or the caller asked for a network that drops them).
    """
    domains = list(range(len(model.spec.domains))) if domains is None else list(domains)
    n_gates = len(model.gated_masks())
    if len(keep) != n_gates:
        raise ValueError(f"keep needs one index tensor per gated conv ({n_gates})")
    rows = torch.tensor(domains, dtype=torch.long, device=model.gated_masks()[0].device)
    spec = replace(
        model.spec,
        domains=tuple(model.spec.domains[d] for d in domains),
        mid_channels=tuple(len(k) for k in keep),
    )
    out = build_model(spec).to(next(model.parameters()).device)
    src, cuts, per_domain = model.state_dict(), _cuts(model), _per_domain(model)
    new: dict[str, Tensor] = {}
    for name in out.state_dict():
        parts = name.split(".")
        if parts[0] == "heads":  # heads.<j>.<weight|bias> comes from the j-th kept domain
            new[name] = src[f"heads.{domains[int(parts[1])]}.{parts[2]}"].clone()
            continue
        value = src[name][rows] if name in per_domain else src[name]
        for dim, gate in cuts.get(name, ()):
            value = value.index_select(dim, keep[gate].to(value.device))
        new[name] = value.clone()
    out.load_state_dict(new, strict=True)
    return out.train(model.training)


@torch.no_grad()
def pad_filters(model: MultiDomainResNet, multiple: int) -> MultiDomainResNet:
    """The same network with each gated conv's filter count rounded up to `multiple` (one with
    none keeps none; none grows past the full backbone's width); every added filter outputs
    exactly zero for every domain (zero conv row and column, zero BN scale and shift, zero
    mask), so every output is the same (up to a kernel's summation order).

    Why: a compiled runtime's fast convolution kernels want channel counts in whole SIMD blocks,
    and pruning leaves arbitrary counts (see graphs.CHANNEL_BLOCK).
    """
    full = model.spec.unpruned().gated_filters()
    padded = tuple(
        min(-(-k // multiple) * multiple, f)
        for k, f in zip(model.spec.gated_filters(), full, strict=True)
    )
    out = build_model(replace(model.spec, mid_channels=padded)).to(next(model.parameters()).device)
    new = {}
    for name, target in out.state_dict().items():
        value = model.state_dict()[name]
        if value.shape != target.shape:  # a gated conv, its reader, BN or mask: zero-extend
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


@torch.no_grad()
def expand_network(pruned: MultiDomainResNet, convs: dict[str, Tensor]) -> MultiDomainResNet:
    """The inverse of slicing: `pruned` put back into its unpruned backbone (`convs`: every
    shared conv's full weight by state-dict name). Each stored filter goes back to its original
    index, found by matching its frozen conv row exactly (after the columns an earlier gate cut,
    as in a bottleneck's conv2); the filters pruning removed come back with every domain's switch
    off, so every domain's outputs are the pruned network's (to float tolerance)."""
    full = build_model(pruned.spec.unpruned())
    cuts, src = _cuts(full), pruned.state_dict()
    kept: list[Tensor] = []
    for conv, _, _, _ in full.gate_names():
        weight = convs[f"{conv}.weight"]
        for dim, gate in cuts[f"{conv}.weight"]:
            if dim == 1:
                weight = weight.index_select(1, kept[gate])
        rows = {row.numpy().tobytes(): j for j, row in enumerate(weight)}
        try:
            found = [rows[row.numpy().tobytes()] for row in src[f"{conv}.weight"]]
        except KeyError:
            raise ValueError(f"{conv}: the backbone does not hold this network's filters") from None
        kept.append(torch.tensor(found, dtype=torch.long))
    masks = {mask for _, _, mask, _ in full.gate_names()}
    for name, target in full.state_dict().items():
        if name in convs:
            target.copy_(convs[name])
            continue
        gated = [(dim, gate) for dim, gate in cuts.get(name, ()) if dim == 1]
        if not gated:
            target.copy_(src[name])
            continue
        if name in masks:
            target.zero_()  # a filter pruning removed stays off for every domain
        target.index_copy_(1, kept[gated[0][1]], src[name])
    return full
