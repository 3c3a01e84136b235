"""The one cost counter: MACs and parameters per filter, per domain and per model.

The budget loss, the sharing loss, the export-time budget guarantee, the reports and the server's
metrics all call these functions, so a "0.5" means the same thing everywhere.

What is counted:
- macs: multiply-accumulates of every conv and of the domain's linear head for one image at the
  spec's input size. BatchNorm, ReLU, pooling and the residual add are not counted (BN folds into
  the conv at inference; the rest are elementwise).
- params: conv weights, the domain's BatchNorm affine (2 per channel) and its head. Running
  statistics and masks are buffers, not parameters.

A gated filter costs its own row of its conv, its column of the conv that reads it, and (in
params) its BN affine pair. Ungated: the stem, the convs that write into the residual stream
(their part not attributed to a gated filter), the downsample shortcuts and the head.

Each filter's cost is fixed by the full network's shape, so a domain's cost is linear in its
masks (a budget hinge with a clean gradient, a greedy cut at export) and the same before and
after pruning. Where a gated conv reads another (a bottleneck's conv2 reads conv1), their product
term k1 * k2 is not linear: each of the two filters carries half of its share of conv2 at the
other conv's full width. That equals conv2's cost when both are full or both empty and is never
below it (k1 K2 + K1 k2 >= 2 k1 k2), so a counted cost bounds what the pruned network runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..spec import BlockSpec, ModelSpec

UNITS = ("macs", "params")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"cost unit must be one of {UNITS}, got {unit!r}")


def _sides(spec: ModelSpec) -> tuple[int, int, list[int]]:
    """Spatial side of the stem conv's output, of the first block's input, and of each block's
    output (torchvision: the 7x7 conv and the max-pool each halve)."""
    side = spec.input_size
    stem = side // 2 if spec.architecture.family == "torchvision" else side
    side = stem // 2 if spec.architecture.family == "torchvision" else stem
    first, outs = side, []
    for block in spec.full_blocks():
        side //= block.stride
        outs.append(side)
    return stem, first, outs


def _block_filter_costs(
    block: BlockSpec, full: BlockSpec, side_in: int, side: int, unit: str, bottleneck: bool
) -> list[float]:
    """One block's per-filter cost of each gated conv (see the module docstring)."""
    area_in, area = (side_in**2, side**2) if unit == "macs" else (1, 1)
    affine = 0 if unit == "macs" else 2
    cin, cout = block.in_channels, block.out_channels
    if not bottleneck:  # conv1 row (3x3) + conv2 column (3x3)
        return [9 * cin * area + 9 * cout * area + affine]
    k1, k2 = full.gated
    conv1 = cin * area_in + 9 * k2 * area / 2 + affine  # conv1 row (1x1) + half of conv2
    conv2 = 9 * k1 * area / 2 + cout * area + affine  # half of conv2 + conv3 column (1x1)
    return [conv1, conv2]


def filter_costs(spec: ModelSpec, unit: str) -> list[Tensor]:
    """Per gated conv, the cost of each of its filters this network holds (float64 vector)."""
    _check_unit(unit)
    bottleneck = spec.architecture.block == "bottleneck"
    _, side_in, sides = _sides(spec)
    out = []
    for block, full, side in zip(spec.blocks(), spec.full_blocks(), sides, strict=True):
        per_filter = _block_filter_costs(block, full, side_in, side, unit, bottleneck)
        for kept, cost in zip(block.gated, per_filter, strict=True):
            out.append(torch.full((kept,), float(cost), dtype=torch.float64))
        side_in = side
    return out


def _ungated_convs(spec: ModelSpec, unit: str) -> int:
    """The stem and the downsample convs (MACs or weights)."""
    stem_side, _, sides = _sides(spec)
    stem_kernel = 49 if spec.architecture.family == "torchvision" else 9
    area = stem_side**2 if unit == "macs" else 1
    total = 3 * stem_kernel * spec.stem_channels * area
    for block, side in zip(spec.full_blocks(), sides, strict=True):
        if block.projection:
            total += block.in_channels * block.out_channels * (side**2 if unit == "macs" else 1)
    return total


def _ungated_channels(spec: ModelSpec) -> int:
    """Channels of the BNs that pruning never narrows: stem, block outputs, downsample, head."""
    blocks = spec.full_blocks()
    head = spec.feature_channels if spec.architecture.family == "decathlon" else 0
    outputs = sum(b.out_channels * (2 if b.projection else 1) for b in blocks)
    return spec.stem_channels + outputs + head


def ungated_cost(spec: ModelSpec, unit: str, domain: int) -> float:
    """Everything that does not depend on the switches: stem, block-output and downsample
    BNs and convs, the head BN (Decathlon) and the head."""
    _check_unit(unit)
    classes, feats = len(spec.domains[domain].labels), spec.feature_channels
    if unit == "macs":
        return float(_ungated_convs(spec, unit) + feats * classes)
    bn = 2 * _ungated_channels(spec)
    return float(_ungated_convs(spec, unit) + bn + feats * classes + classes)


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
    """Cost of one domain under `masks` (one vector per gated conv); differentiable in them."""
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


def _block_weights(block: BlockSpec, bottleneck: bool) -> int:
    """Conv weights a block holds with its kept filters (downsample not included)."""
    cin, cout = block.in_channels, block.out_channels
    if not bottleneck:
        return 9 * block.gated[0] * (cin + cout)
    k1, k2 = block.gated
    return cin * k1 + 9 * k1 * k2 + k2 * cout


def model_parameters(spec: ModelSpec) -> int:
    """Parameters the network stores: shared convs once, every domain's BNs and head."""
    bottleneck = spec.architecture.block == "bottleneck"
    convs = _ungated_convs(spec, "params") + sum(
        _block_weights(b, bottleneck) for b in spec.blocks()
    )
    channels = _ungated_channels(spec) + sum(spec.gated_filters())
    feats = spec.feature_channels
    per_domain = sum(2 * channels + (feats + 1) * len(d.labels) for d in spec.domains)
    return convs + per_domain


def single_domain_parameters(spec: ModelSpec) -> float:
    """One unpruned single-domain network, averaged over the domains' head sizes."""
    n = len(spec.domains)
    return sum(baseline_cost(spec, "params", d) for d in range(n)) / n


def independent_parameters(spec: ModelSpec) -> int:
    """N separately fine-tuned single-domain models: what multi-domain learning saves against."""
    return int(sum(baseline_cost(spec, "params", d) for d in range(len(spec.domains))))
