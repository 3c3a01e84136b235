"""Model level: per-domain latency and peak memory, pruned vs unpruned, in one process.

Cases, for each batch size (medians after warm-up, `torch.inference_mode`, as the server runs):
- the unpruned single-domain ResNet-26 (the reference every speedup divides),
- the masked unpruned multi-domain network (`model(x, d)`: every filter computed, then masked),
- the pruned BAP network at each budget, run three ways: union + mask (`model(x, d)`), the
  domain's own filters (`domain_view(model, d)(x, 0)`), and a batch mixing all domains
  (`forward_mixed`). Union + mask computes the same filters for every domain, so it is timed
  on domain 0; the own-filter views differ per domain, so each domain is timed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from model_store import MultiDomainResNet, domain_view, prune_to_union

from .common import Timing, peak_rss_delta, time_call
from .workloads import Shape, domain_fraction, executed_macs, masked_network

log = logging.getLogger(__name__)
NUM_DOMAINS = 4


@dataclass(frozen=True)
class Settings:
    shapes: tuple[Shape, ...]
    batches: tuple[int, ...]
    budgets: tuple[float, ...]
    seconds_per_case: float
    warmup: int = 2
    min_reps: int = 5


@dataclass(frozen=True)
class Case:
    """One network run one way for one domain; `run(x)` is what gets timed."""

    network: str
    strategy: str
    budget: float | None
    domain: int | str
    macs: float
    run: Callable[[Tensor], object]
    domain_fraction: float | None = None


def cases(shape: Shape, budgets: tuple[float, ...]) -> list[Case]:
    """Every network and execution strategy of one backbone shape."""
    single = masked_network(shape, 1, 1.0, seed=0)
    masked = masked_network(shape, NUM_DOMAINS, budgets[0], seed=1)
    out = [
        Case("single-domain ResNet-26", "full", None, 0, executed_macs(single), _on(single, 0)),
        Case(
            "multi-domain, masked",
            "all filters + mask",
            None,
            0,
            executed_macs(masked),
            _on(masked, 0),
        ),
    ]
    for i, budget in enumerate(budgets):
        full = masked_network(shape, NUM_DOMAINS, budget, seed=10 + i)
        pruned = prune_to_union(full)
        out.append(
            Case(
                "BAP pruned",
                "union + mask",
                budget,
                0,
                executed_macs(pruned),
                _on(pruned, 0),
                domain_fraction(full, 0),
            )
        )
        for d in range(NUM_DOMAINS):
            view = domain_view(pruned, d).eval()
            out.append(
                Case(
                    "BAP pruned",
                    "own filters",
                    budget,
                    d,
                    executed_macs(view),
                    _on(view, 0),
                    domain_fraction(full, d),
                )
            )
        out.append(
            Case("BAP pruned", "mixed batch", budget, "all", executed_macs(pruned), _mixed(pruned))
        )
    return out


def _on(model: MultiDomainResNet, domain: int) -> Callable[[Tensor], object]:
    return lambda x: model(x, domain)


def _mixed(model: MultiDomainResNet) -> Callable[[Tensor], object]:
    """Images assigned to the domains round-robin, so every batch of 4+ mixes all of them."""

    def run(x: Tensor) -> object:
        domains = torch.arange(len(x), dtype=torch.long) % len(model.domain_names)
        return model.forward_mixed(x, domains)

    return run


def measure(settings: Settings) -> dict[str, Any]:
    """One row per (shape, batch, case): latency, throughput, memory, speedup vs MACs ratio."""
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for shape in settings.shapes:
            shape_cases = cases(shape, settings.budgets)
            reference = shape_cases[0]
            for batch in settings.batches:
                x = torch.randn(batch, 3, shape.input_size, shape.input_size)
                timings = [_time(c, x, settings) for c in shape_cases]
                base = timings[0].median
                for case, timing in zip(shape_cases, timings, strict=True):
                    rows.append(_row(shape, batch, case, timing, base, reference.macs, x))
                log.info("model: %s batch %d done", shape.label, batch)
    return {"rows": rows}


def _time(case: Case, x: Tensor, settings: Settings) -> Timing:
    return time_call(
        lambda: case.run(x), settings.seconds_per_case, settings.warmup, settings.min_reps
    )


def _row(
    shape: Shape, batch: int, case: Case, timing: Timing, base: float, base_macs: float, x: Tensor
) -> dict[str, Any]:
    return {
        "shape": shape.label,
        "batch": batch,
        "network": case.network,
        "strategy": case.strategy,
        "budget": case.budget,
        "domain": case.domain,
        "domain_cost_fraction": case.domain_fraction,
        "ms": timing.median * 1e3,
        "ms_min": timing.min * 1e3,
        "reps": timing.reps,
        "images_per_s": batch / timing.median,
        "gmacs_per_image": case.macs / 1e9,
        "macs_ratio": base_macs / case.macs,
        "speedup": base / timing.median,
        "peak_mib": peak_rss_delta(lambda: case.run(x)) / 2**20,
    }
