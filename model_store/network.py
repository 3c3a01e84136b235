"""The multi-domain ResNet-26 (Visual Decathlon layout), built only from a ModelSpec.

Read bottom-up: the basic block, then the network, then the named builder. Shared and frozen
after pretraining: every conv weight. Per domain: every BatchNorm, the head, and a binary mask
per filter of each block's first conv, applied after that domain's BN so that a switched-off
filter outputs exactly zero and removing it changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import DomainBatchNorm, DomainRoute, MixedRoute, Route, downsample_shortcut
from .spec import BlockSpec, DomainSpec, ModelSpec


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> mask -> conv3x3 -> BN, plus the shortcut, then ReLU.

    With no kept filter (mid_channels == 0) the residual branch is the constant that BN2 makes
    of an all-zero input, exactly what the masked network computes when every filter is off.
    """

    def __init__(self, spec: BlockSpec, num_domains: int):
        super().__init__()
        self.stride, self.out_channels = spec.stride, spec.out_channels
        self.has_filters = spec.mid_channels > 0
        if self.has_filters:
            self.conv1 = _conv3x3(spec.in_channels, spec.mid_channels, spec.stride)
            self.conv2 = _conv3x3(spec.mid_channels, spec.out_channels)
        self.bn1 = DomainBatchNorm(num_domains, spec.mid_channels)
        self.bn2 = DomainBatchNorm(num_domains, spec.out_channels)
        self.register_buffer("masks", torch.ones(num_domains, spec.mid_channels))

    def forward(self, x: Tensor, route: Route, index: int) -> Tensor:
        shortcut = downsample_shortcut(x, self.stride, self.out_channels)
        if self.has_filters:
            # relu(bn(.)) * m equals relu(bn(.) * m) for a 0/1 mask, but its gradient with respect
            # to m is relu(bn(.)), not 0, at m = 0: a switched-off filter still learns whether
            # it should come back on (masking before the ReLU kills that gradient).
            h = F.relu(route.norm(self.bn1, self.conv1(x)))
            mask = route.mask(index, self.masks)
            h = self.conv2(h if mask is None else h * mask)
        else:
            size = shortcut.shape[-2:]
            h = x.new_zeros(x.shape[0], self.out_channels, *size)
        return F.relu(route.norm(self.bn2, h) + shortcut)


class MultiDomainResNet(nn.Module):
    """One shared backbone, many domains. `forward(x, domain)` runs one domain's filters."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        n = len(spec.domains)
        self.stem = _conv3x3(3, spec.stem_channels)
        self.stem_bn = DomainBatchNorm(n, spec.stem_channels)
        self.blocks = nn.ModuleList(BasicBlock(b, n) for b in spec.blocks())
        self.head_bn = DomainBatchNorm(n, spec.feature_channels)
        self.heads = nn.ModuleList(
            nn.Linear(spec.feature_channels, len(d.labels)) for d in spec.domains
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def domain_names(self) -> tuple[str, ...]:
        return self.spec.domain_names

    def shared_parameters(self) -> list[nn.Parameter]:
        """The conv weights that every domain shares (frozen after pretraining)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]

    def domain_parameters(self) -> list[nn.Parameter]:
        """Per-domain BatchNorm affines and heads: what each domain learns on the backbone."""
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]

    def gated_masks(self) -> list[Tensor]:
        """The stored (domains, filters) mask of each block's gated conv."""
        return [b.masks for b in self.blocks]

    def run(self, x: Tensor, route: Route) -> Tensor | list[Tensor]:
        h = route.norm(self.stem_bn, self.stem(x))  # no ReLU after the stem, as in the reference
        for i, block in enumerate(self.blocks):
            h = block(h, route, i)
        h = F.relu(route.norm(self.head_bn, h))
        return route.head(self.heads, torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def forward(self, x: Tensor, domain: int, masks: Sequence[Tensor] | None = None) -> Tensor:
        """Logits of `domain` for a batch; `masks` replaces the stored masks (training)."""
        return self.run(x, DomainRoute(domain, masks))  # type: ignore[return-value]

    def forward_mixed(self, x: Tensor, domains: Tensor) -> list[Tensor]:
        """Image i through domain `domains[i]`, in one pass over the shared filters (eval only)."""
        return self.run(x, MixedRoute(domains))  # type: ignore[return-value]


def resnet26_decathlon(
    domains: Sequence[DomainSpec], width: float = 1.0, input_size: int = 64
) -> MultiDomainResNet:
    """The full (unpruned) Decathlon ResNet-26 for the given domains."""
    return build_model(ModelSpec(domains=tuple(domains), width=width, input_size=input_size))


ARCH_BUILDERS: dict[str, Callable[..., MultiDomainResNet]] = {
    "resnet26_decathlon": resnet26_decathlon,
}


def build_model(spec: ModelSpec) -> MultiDomainResNet:
    """Rebuild a network of exactly this shape (full, pruned or a single domain's view)."""
    return MultiDomainResNet(spec)
