"""The multi-domain ResNet-26 (Visual Decathlon layout), and `build_model`, which rebuilds any
registered architecture from a ModelSpec.

Read bottom-up: the basic block, then the network, then the registry. Shared and frozen after
pretraining: every conv weight. Per domain: every BatchNorm, the head, and a binary mask per
filter of each block's first conv, applied after that domain's BN so that a switched-off filter
outputs exactly zero and removing it changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spec import BlockSpec, ModelSpec
from .layers import (
    DomainBatchNorm,
    MultiDomainResNet,
    Route,
    downsample_shortcut,
    gated_output,
    zeros_like_output,
)
from .resnet import TorchvisionResNet


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> mask -> conv3x3 -> BN, plus the shortcut, then ReLU.

    With no kept filter (mid_channels == 0) the residual branch is the constant that BN2 makes
    of an all-zero input, exactly what the masked network computes when every filter is off.
    """

    GATES = (("conv1", "bn1", "masks", "conv2"),)

    def __init__(self, spec: BlockSpec, num_domains: int):
        super().__init__()
        (mid,) = spec.gated
        self.stride, self.out_channels = spec.stride, spec.out_channels
        self.has_filters = mid > 0
        if self.has_filters:
            self.conv1 = _conv3x3(spec.in_channels, mid, spec.stride)
            self.conv2 = _conv3x3(mid, spec.out_channels)
        self.bn1 = DomainBatchNorm(num_domains, mid)
        self.bn2 = DomainBatchNorm(num_domains, spec.out_channels)
        self.register_buffer("masks", torch.ones(num_domains, mid))

    def forward(self, x: Tensor, route: Route, gate: int) -> Tensor:
        shortcut = downsample_shortcut(x, self.stride, self.out_channels)
        if self.has_filters:
            h = self.conv2(gated_output(route, self.bn1, self.conv1(x), gate, self.masks))
        else:
            h = zeros_like_output(x, self.out_channels, shortcut)
        return F.relu(route.norm(self.bn2, h) + shortcut)


class DecathlonResNet(MultiDomainResNet):
    """3x3 stem + BN (no ReLU, as in the reference), 3 stages of basic blocks, BN + ReLU, pool."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        n = len(spec.domains)
        self.stem = _conv3x3(3, spec.stem_channels)
        self.stem_bn = DomainBatchNorm(n, spec.stem_channels)
        self.blocks = nn.ModuleList(BasicBlock(b, n) for b in spec.blocks())
        self.head_bn = DomainBatchNorm(n, spec.feature_channels)
        self.heads = self.make_heads()
        self.reset_parameters()

    def named_blocks(self) -> Iterator[tuple[str, nn.Module]]:
        return ((f"blocks.{i}", b) for i, b in enumerate(self.blocks))

    def run(self, x: Tensor, route: Route) -> Tensor | list[Tensor]:
        h = self.run_blocks(route.norm(self.stem_bn, self.stem(x)), route)
        h = F.relu(route.norm(self.head_bn, h))
        return route.head(self.heads, torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


# Every architecture a ModelSpec may name, by name (spec.ARCHITECTURES holds their shapes).
ARCH_BUILDERS: dict[str, Callable[[ModelSpec], MultiDomainResNet]] = {
    "resnet26_decathlon": DecathlonResNet,
    "resnet18": TorchvisionResNet,
    "resnet34": TorchvisionResNet,
    "resnet50": TorchvisionResNet,
}


def build_model(spec: ModelSpec) -> MultiDomainResNet:
    """Rebuild a network of exactly this shape (full, pruned or a single domain's view)."""
    return ARCH_BUILDERS[spec.arch](spec)
