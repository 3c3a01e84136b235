"""Per-domain, per-filter switches: real-valued scores, binary masks, straight-through gradients.

Forward uses m = 1[s > 0], exactly 0 or 1, so training sees the network that will be served.
Backward passes the mask's gradient to the score unchanged (straight-through), zeroed where
|s| > clip so that a score far from the threshold stops drifting.

The cost terms use `active_only` masks, whose gradient reaches only switches that are on. A
plain straight-through cost gradient keeps pushing switched-off scores further below zero for
as long as the budget pressure lasts; they then need many steps to come back once it eases, and
the cost overshoots far below the budget (we measured per-domain costs of 0.10 for a budget of
0.5). With the push on active filters only, a switched-off filter is judged by the
cross-entropy alone and returns if it is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _StraightThroughStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, clip: float, active_only: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(scores)
        ctx.clip, ctx.active_only = clip, active_only
        return (scores > 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (scores,) = ctx.saved_tensors
        if ctx.clip > 0:
            grad = grad * (scores.abs() <= ctx.clip).to(grad.dtype)
        if ctx.active_only:
            grad = grad * (scores > 0).to(grad.dtype)
        return grad, None, None


def binary_step(scores: Tensor, clip: float = 0.0, active_only: bool = False) -> Tensor:
    """1[scores > 0] with a straight-through gradient (optionally clipped, or reaching only the
    switches that are on)."""
    return _StraightThroughStep.apply(scores, clip, active_only)


class Switches(nn.Module):
    """Scores of shape (domains, filters) for each gated conv, all starting on at `init`."""

    def __init__(self, filters_per_block: list[int], num_domains: int, init: float, clip: float):
        super().__init__()
        if init <= 0:
            raise ValueError("switch scores must start above 0 (every filter on)")
        self.clip = clip
        self.scores = nn.ParameterList(
            nn.Parameter(torch.full((num_domains, n), float(init))) for n in filters_per_block
        )

    def all_masks(self, active_only: bool = False) -> list[Tensor]:
        """Every domain's masks, (domains, filters) per block, differentiable."""
        return [binary_step(s, self.clip, active_only) for s in self.scores]

    @torch.no_grad()
    def spread_by_importance(self, bn_scales: list[Tensor]) -> None:
        """Start each score at init x |gamma| / mean |gamma| of the filter's BN (per domain and
        block), still all on. With identical starts a uniform budget push switches a whole
        block off at once; spread by the BN scale (the network-slimming importance proxy) the
        least important filters cross zero first."""
        for scores, gamma in zip(self.scores, bn_scales, strict=True):
            mag = gamma.abs()
            scores.copy_(scores * mag / mag.mean(dim=1, keepdim=True).clamp_min(1e-12))
            scores.clamp_(min=1e-6)

    @torch.no_grad()
    def hard_masks(self) -> list[Tensor]:
        """The binary (domains, filters) masks the model will store."""
        return [(s > 0).float() for s in self.scores]
