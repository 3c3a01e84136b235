"""Small building blocks: per-domain BatchNorm and the routing of a batch to its domain(s).

A `Route` says which domain's statistics, masks and head each image uses. The network is written
once against this interface, so running one domain, running a batch that mixes domains, and
training with live switch masks are the same forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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

    def mask(self, block_index: int, stored: Tensor) -> Tensor | None:
        """The filter mask for a gated conv, shaped to broadcast over (N, C, H, W); None when
        every filter the network holds is on for these images (nothing to multiply)."""
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

    def mask(self, block_index: int, stored: Tensor) -> Tensor:
        m = stored[self.domain] if self.masks is None else self.masks[block_index]
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

    def mask(self, block_index: int, stored: Tensor) -> Tensor:
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
