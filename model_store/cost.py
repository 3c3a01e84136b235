"""The one cost counter: MACs and parameters per filter, per domain and per model.

The budget loss, the sharing loss, the export-time budget guarantee, the reports and the server's
metrics all call these functions, so a "0.5" means the same thing everywhere.

What is counted:
- macs: multiply-accumulates of every conv and of the domain's linear head for one image at the
  spec's input size. BatchNorm, ReLU, pooling and the residual add are not counted (BN folds into
  the conv at inference; the rest are elementwise).
- params: conv weights, the domain's BatchNorm affine (2 per channel) and its head. Running
  statistics and masks are buffers, not parameters.

Only the first conv of every basic block is gated. One of its filters costs its own row of conv1
plus the matching input column of conv2 (and, in params, its BN1 affine pair).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .spec import ModelSpec

UNITS = ("macs", "params")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"cost unit must be one of {UNITS}, got {unit!r}")


def block_output_sizes(spec: ModelSpec) -> list[int]:
    """Spatial side of each block's output (the stem keeps the input size)."""
    sizes, side = [], spec.input_size
    for block in spec.full_blocks():
        side //= block.stride
        sizes.append(side)
    return sizes


def filter_costs(spec: ModelSpec, unit: str) -> list[Tensor]:
    """Per block, the cost of each gated filter this network holds (float64 vector)."""
    _check_unit(unit)
    out = []
    for block, side in zip(spec.blocks(), block_output_sizes(spec), strict=True):
        per_filter = 9 * (block.in_channels + block.out_channels)
        per_filter = per_filter * side * side if unit == "macs" else per_filter + 2
        out.append(torch.full((block.mid_channels,), float(per_filter), dtype=torch.float64))
    return out


def ungated_cost(spec: ModelSpec, unit: str, domain: int) -> float:
    """Everything that does not depend on the switches: stem, BN2s, head BN and the head."""
    _check_unit(unit)
    classes = len(spec.domains[domain].labels)
    stem, feats = spec.stem_channels, spec.feature_channels
    if unit == "macs":
        return float(27 * stem * spec.input_size**2 + feats * classes)
    bn = 2 * (stem + sum(b.out_channels for b in spec.full_blocks()) + feats)
    return float(27 * stem + bn + feats * classes + classes)


def baseline_cost(spec: ModelSpec, unit: str, domain: int) -> float:
    """The full single-domain backbone with this domain's head: the budget's denominator."""
    full = spec.unpruned()
    return ungated_cost(full, unit, domain) + float(sum(c.sum() for c in filter_costs(full, unit)))


def domain_cost(
    spec: ModelSpec,
    unit: str,
    domain: int,
    masks: Sequence[Tensor],
    costs: Sequence[Tensor] | None = None,
) -> Tensor:
    """Cost of one domain under `masks` (one vector per block); differentiable in the masks."""
    costs = filter_costs(spec, unit) if costs is None else costs
    gated = sum((c.to(m.dtype) * m).sum() for c, m in zip(costs, masks, strict=True))
    return gated + ungated_cost(spec, unit, domain)


def cost_fraction(
    spec: ModelSpec,
    unit: str,
    domain: int,
    masks: Sequence[Tensor],
    costs: Sequence[Tensor] | None = None,
) -> Tensor:
    """Domain cost / full single-domain backbone cost: the number compared with the budget."""
    return domain_cost(spec, unit, domain, masks, costs) / baseline_cost(spec, unit, domain)


def shared_fraction(
    spec: ModelSpec, unit: str, masks: Sequence[Tensor], costs: Sequence[Tensor] | None = None
) -> Tensor:
    """Cost fraction of one mask for the whole model (the union of the domains' filters, say),
    averaged over the domains' heads so that it compares with the budget."""
    n = len(spec.domains)
    return sum(cost_fraction(spec, unit, d, masks, costs) for d in range(n)) / n


def model_parameters(spec: ModelSpec) -> int:
    """Parameters the network stores: shared convs once, every domain's BNs and head."""
    blocks = spec.blocks()
    convs = 27 * spec.stem_channels + sum(
        9 * b.mid_channels * (b.in_channels + b.out_channels) for b in blocks
    )
    channels = spec.stem_channels + sum(b.mid_channels + b.out_channels for b in blocks)
    per_domain = sum(
        2 * (channels + spec.feature_channels) + (spec.feature_channels + 1) * len(d.labels)
        for d in spec.domains
    )
    return convs + per_domain


def single_domain_parameters(spec: ModelSpec) -> float:
    """One unpruned single-domain ResNet-26, averaged over the domains' head sizes."""
    n = len(spec.domains)
    return sum(baseline_cost(spec, "params", d) for d in range(n)) / n


def independent_parameters(spec: ModelSpec) -> int:
    """N separately fine-tuned single-domain models: what multi-domain learning saves against."""
    return int(sum(baseline_cost(spec, "params", d) for d in range(len(spec.domains))))
