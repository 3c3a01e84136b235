"""Small building blocks: per-domain BatchNorm, the routing of a batch to its domain(s), the
gated conv output, and what every architecture's network shares.

A `Route` says which domain's statistics, masks and head each image uses. The network is written
once against this interface, so running one domain, running a batch that mixes domains, and
training with live switch masks are the same forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spec import ModelSpec


class DomainBatchNorm(nn.Module):
    """BatchNorm with one set of affine parameters and running statistics per domain.

    Stored stacked as (domains, channels) so that one row is one domain's BN, slicing a channel
    is one index on dim 1, and a mixed batch can gather per-sample rows.
    """

    def __init__(self, num_domains: int, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_domains, channels))
        self.bias = nn.Parameter(torch.zeros(num_domains, channels))
        self.register_buffer("running_mean", torch.zeros(num_domains, channels))
        self.register_buffer("running_var", torch.ones(num_domains, channels))

    def forward(self, x: Tensor, domain: int) -> Tensor:
        # Row views share storage, so training updates this domain's running stats in place.
        return F.batch_norm(
            x,
            self.running_mean[domain],
            self.running_var[domain],
            self.weight[domain],
            self.bias[domain],
            self.training,
            self.momentum,
            self.eps,
        )

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """Eval-mode BN as y = x * scale + shift, per (domain, channel)."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale


class Route:
    """Which domain each image of a batch belongs to."""

    def norm(self, bn: DomainBatchNorm, x: Tensor) -> Tensor:
        raise NotImplementedError

    def mask(self, gate: int, stored: Tensor) -> Tensor | None:
        """The filter mask for gated conv number `gate`, shaped to broadcast over (N, C, H, W);
        None when every filter the network holds is on for these images (nothing to multiply)."""
        raise NotImplementedError

    def head(self, heads: nn.ModuleList, features: Tensor) -> Tensor | list[Tensor]:
        raise NotImplementedError


class DomainRoute(Route):
    """Every image is of one domain. `masks` (one per gated conv) override the stored masks;
    training passes its live straight-through switch masks this way."""

    def __init__(self, domain: int, masks: Sequence[Tensor] | None = None):
        self.domain, self.masks = domain, masks

    def norm(self, bn: DomainBatchNorm, x: Tensor) -> Tensor:
        return bn(x, self.domain)

    def mask(self, gate: int, stored: Tensor) -> Tensor:
        m = stored[self.domain] if self.masks is None else self.masks[gate]
        return m.view(1, -1, 1, 1)

    def head(self, heads: nn.ModuleList, features: Tensor) -> Tensor:
        return heads[self.domain](features)


class MixedRoute(Route):
    """Image i is of domain `domains[i]`: eval-mode only, BN folded to a per-sample affine."""

    def __init__(self, domains: Tensor):
        if domains.dim() != 1 or domains.dtype != torch.long:
            raise ValueError("domains must be a 1-D long tensor, one index per image")
        self.domains = domains

    def norm(self, bn: DomainBatchNorm, x: Tensor) -> Tensor:
        if bn.training:
            raise RuntimeError("a mixed-domain batch runs in eval mode only")
        scale, shift = bn.scale_shift()
        return torch.addcmul(
            shift[self.domains][:, :, None, None], x, scale[self.domains][:, :, None, None]
        )

    def mask(self, gate: int, stored: Tensor) -> Tensor:
        return stored[self.domains][:, :, None, None]

    def head(self, heads: nn.ModuleList, features: Tensor) -> list[Tensor]:
        # Heads differ in class count, so each domain's images go through its head together.
        out: list[Tensor | None] = [None] * len(self.domains)
        for d in self.domains.unique().tolist():
            rows = (self.domains == d).nonzero().flatten()
            for row, logits in zip(rows.tolist(), heads[d](features[rows]), strict=True):
                out[row] = logits
        return out  # type: ignore[return-value]


def downsample_shortcut(x: Tensor, stride: int, out_channels: int) -> Tensor:
    """Parameter-free shortcut: 2x2 average pool, then zero channels appended up to out."""
    if stride != 1:
        x = F.avg_pool2d(x, stride)
    extra = out_channels - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra > 0 else x


def gated_output(route: Route, bn: DomainBatchNorm, x: Tensor, gate: int, stored: Tensor) -> Tensor:
    """A gated conv's output `x` through the domain's BN, the ReLU and the domain's mask.

    relu(bn(.)) * m equals relu(bn(.) * m) for a 0/1 mask, but its gradient with respect to m is
    relu(bn(.)), not 0, at m = 0: a switched-off filter still learns whether it should come back
    on (masking before the ReLU kills that gradient).
    """
    h = F.relu(route.norm(bn, x))
    mask = route.mask(gate, stored)
    return h if mask is None else h * mask


def zeros_like_output(x: Tensor, channels: int, like: Tensor) -> Tensor:
    """What a conv whose every input channel (or filter) was removed outputs: exact zeros, at
    `like`'s spatial size; the masked network computes the same from all-zero inputs."""
    return x.new_zeros(x.shape[0], channels, *like.shape[-2:])


class MultiDomainResNet(nn.Module):
    """One shared backbone, many domains. `forward(x, domain)` runs one domain's filters.

    Each architecture subclasses it: `named_blocks()` lists its residual blocks by state-dict
    prefix, each block's GATES names its gated convs (conv, its BN, its mask buffer, the conv
    that reads its filters), and `run` is its forward pass. Slicing, cost and training are
    written against these, not against one architecture.
    """

    heads: nn.ModuleList

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec

    def make_heads(self) -> nn.ModuleList:
        """One linear classifier per domain on the pooled features."""
        feats = self.spec.feature_channels
        return nn.ModuleList(nn.Linear(feats, len(d.labels)) for d in self.spec.domains)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def domain_names(self) -> tuple[str, ...]:
        return self.spec.domain_names

    def named_blocks(self) -> Iterator[tuple[str, nn.Module]]:
        """(state-dict prefix, block) of every residual block, in order."""
        raise NotImplementedError

    def gate_names(self) -> list[tuple[str, str, str, str]]:
        """Per gated conv, in gate order: the state-dict prefixes of the conv, its BN, its mask
        buffer and the conv that reads its filters (what slicing cuts together)."""
        return [
            tuple(f"{prefix}.{part}" for part in gate)  # type: ignore[misc]
            for prefix, block in self.named_blocks()
            for gate in block.GATES
        ]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The conv weights that every domain shares (frozen after pretraining)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]

    def domain_parameters(self) -> list[nn.Parameter]:
        """Per-domain BatchNorm affines and heads: what each domain learns on the backbone."""
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]

    def gated_masks(self) -> list[Tensor]:
        """The stored (domains, filters) mask of each gated conv, in gate order."""
        return [self.get_buffer(mask) for _, _, mask, _ in self.gate_names()]

    def gated_norms(self) -> list[DomainBatchNorm]:
        """The BN after each gated conv (its scale tells a filter's importance)."""
        return [self.get_submodule(bn) for _, bn, _, _ in self.gate_names()]  # type: ignore[misc]

    def run_blocks(self, h: Tensor, route: Route) -> Tensor:
        gate = 0
        for _, block in self.named_blocks():
            h = block(h, route, gate)
            gate += len(block.GATES)
        return h

    def run(self, x: Tensor, route: Route) -> Tensor | list[Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, domain: int, masks: Sequence[Tensor] | None = None) -> Tensor:
        """Logits of `domain` for a batch; `masks` replaces the stored masks (training)."""
        return self.run(x, DomainRoute(domain, masks))  # type: ignore[return-value]

    def forward_mixed(self, x: Tensor, domains: Tensor) -> list[Tensor]:
        """Image i through domain `domains[i]`, in one pass over the shared filters (eval only)."""
        return self.run(x, MixedRoute(domains))  # type: ignore[return-value]
