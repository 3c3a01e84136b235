"""ResNet-18, -34 and -50 in torchvision's layout (also timm's), multi-domain and gated.

Read bottom-up: the shortcut, the two blocks, then the network. Module names follow torchvision's
(`conv1`, `bn1`, `layer{1-4}.{i}.conv{1,2,3}`, `.bn{1,2,3}`, `.downsample.{0,1}`), so a
torchvision or timm state dict maps onto this network key for key (see pretrained.py).

Gated (mask after the domain's BN, before the ReLU): a basic block's conv1; a bottleneck's conv1
and conv2. Ungated, since they write into the residual stream: the stem, a basic block's conv2,
a bottleneck's conv3 and every downsample conv. Per domain: every BN (downsample BN included),
the head and the masks. A gated conv with no kept filter is absent, and what it would feed is
computed from exact zeros, as the masked network computes it with every filter off.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spec import BlockSpec, ModelSpec
from .layers import DomainBatchNorm, MultiDomainResNet, Route, gated_output, zeros_like_output


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class Downsample(nn.ModuleList):
    """1x1 stride-s conv + the domain's BN: the projection shortcut (keys `downsample.0/1`)."""

    def __init__(self, spec: BlockSpec, num_domains: int):
        super().__init__(
            [
                _conv(spec.in_channels, spec.out_channels, 1, spec.stride),
                DomainBatchNorm(num_domains, spec.out_channels),
            ]
        )

    def forward(self, x: Tensor, route: Route) -> Tensor:  # type: ignore[override]
        return route.norm(self[1], self[0](x))


def _shortcut(block: nn.Module, x: Tensor, route: Route) -> Tensor:
    return x if block.downsample is None else block.downsample(x, route)


class BasicBlock(nn.Module):
    """conv3x3 (stride) -> BN -> ReLU -> mask -> conv3x3 -> BN, + shortcut, ReLU."""

    GATES = (("conv1", "bn1", "mask1", "conv2"),)

    def __init__(self, spec: BlockSpec, num_domains: int):
        super().__init__()
        (self.width,) = spec.gated
        self.out_channels = spec.out_channels
        if self.width:
            self.conv1 = _conv(spec.in_channels, self.width, 3, spec.stride)
            self.conv2 = _conv(self.width, spec.out_channels, 3)
        self.bn1 = DomainBatchNorm(num_domains, self.width)
        self.bn2 = DomainBatchNorm(num_domains, spec.out_channels)
        self.register_buffer("mask1", torch.ones(num_domains, self.width))
        self.downsample = Downsample(spec, num_domains) if spec.projection else None

    def forward(self, x: Tensor, route: Route, gate: int) -> Tensor:
        shortcut = _shortcut(self, x, route)
        if self.width:
            h = self.conv2(gated_output(route, self.bn1, self.conv1(x), gate, self.mask1))
        else:
            h = zeros_like_output(x, self.out_channels, shortcut)
        return F.relu(route.norm(self.bn2, h) + shortcut)


class Bottleneck(nn.Module):
    """conv1x1 -> BN -> ReLU -> mask -> conv3x3 (stride) -> BN -> ReLU -> mask -> conv1x1 -> BN,
    + shortcut, ReLU (torchvision's "ResNet v1.5": the stride sits on the 3x3 conv)."""

    GATES = (("conv1", "bn1", "mask1", "conv2"), ("conv2", "bn2", "mask2", "conv3"))

    def __init__(self, spec: BlockSpec, num_domains: int):
        super().__init__()
        self.width1, self.width2 = spec.gated
        self.out_channels = spec.out_channels
        if self.width1:
            self.conv1 = _conv(spec.in_channels, self.width1, 1)
        if self.width1 and self.width2:
            self.conv2 = _conv(self.width1, self.width2, 3, spec.stride)
        if self.width2:
            self.conv3 = _conv(self.width2, spec.out_channels, 1)
        self.bn1 = DomainBatchNorm(num_domains, self.width1)
        self.bn2 = DomainBatchNorm(num_domains, self.width2)
        self.bn3 = DomainBatchNorm(num_domains, spec.out_channels)
        self.register_buffer("mask1", torch.ones(num_domains, self.width1))
        self.register_buffer("mask2", torch.ones(num_domains, self.width2))
        self.downsample = Downsample(spec, num_domains) if spec.projection else None

    def forward(self, x: Tensor, route: Route, gate: int) -> Tensor:
        shortcut = _shortcut(self, x, route)
        if not self.width2:  # conv1's filters feed nothing: skip them
            h = zeros_like_output(x, self.out_channels, shortcut)
        else:
            if self.width1:
                h = gated_output(route, self.bn1, self.conv1(x), gate, self.mask1)
                h = self.conv2(h)
            else:
                h = zeros_like_output(x, self.width2, shortcut)
            h = self.conv3(gated_output(route, self.bn2, h, gate + 1, self.mask2))
        return F.relu(route.norm(self.bn3, h) + shortcut)


class TorchvisionResNet(MultiDomainResNet):
    """7x7 stride-2 stem + BN + ReLU + 3x3 stride-2 max-pool, four stages, pool, the head."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        n, stem = len(spec.domains), spec.stem_channels
        block = Bottleneck if spec.architecture.block == "bottleneck" else BasicBlock
        self.conv1 = _conv(3, stem, 7, 2)
        self.bn1 = DomainBatchNorm(n, stem)
        self.stages = len(spec.architecture.depths)
        for s, blocks in enumerate(spec.stages()):
            self.add_module(f"layer{s + 1}", nn.ModuleList(block(b, n) for b in blocks))
        self.heads = self.make_heads()
        self.reset_parameters()

    def named_blocks(self) -> Iterator[tuple[str, nn.Module]]:
        for s in range(1, self.stages + 1):
            for i, block in enumerate(self.get_submodule(f"layer{s}")):
                yield f"layer{s}.{i}", block

    def run(self, x: Tensor, route: Route) -> Tensor | list[Tensor]:
        h = F.relu(route.norm(self.bn1, self.conv1(x)))
        h = self.run_blocks(F.max_pool2d(h, 3, stride=2, padding=1), route)
        return route.head(self.heads, torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
