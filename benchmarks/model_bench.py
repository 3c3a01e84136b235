"""Model level: per-domain latency and peak memory, pruned vs unpruned, in one process.

Cases, for each batch size (medians after warm-up, `torch.inference_mode`, as the server runs):
- the unpruned single-domain ResNet-26 (the reference every speedup divides),
- the masked unpruned multi-domain network (`model(x, d)`: every filter computed, then masked),
- the pruned BAP network at each budget, run three ways: union + mask (`model(x, d)`), the
  domain's own filters (`domain_view(model, d)(x, 0)`), and a batch mixing all domains
  (`forward_mixed`). Union + mask computes the same filters for every domain, so it is timed
  on domain 0; the own-filter views differ per domain, so each domain is timed.
- the same reference and own-filter views exported to ONNX and run in ONNX Runtime, as the
  server runs them (`model_store.runtimes.graphs.domain_graph`): "full, ONNX Runtime" and
  "own filters, ONNX Runtime", so the pruned speed-up through the runtime is their ratio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model_store import (
    ArtifactError,
    MultiDomainResNet,
    domain_view,
    load_version,
    prune_to_union,
)
from model_store.runtimes.graphs import domain_graph
from model_store.runtimes.onnx_runtime import make_session

from .common import Timing, peak_rss_delta, time_calls
from .workloads import Shape, domain_fraction, executed_macs, masked_network

log = logging.getLogger(__name__)
NUM_DOMAINS = 4


@dataclass(frozen=True)
class Settings:
    shapes: tuple[Shape, ...]
    batches: tuple[int, ...]
    budgets: tuple[float, ...]
    seconds_per_case: float
    warmup: int = 1
    min_reps: int = 3
    bundled: tuple[Path, str] | None = None  # (store, model name), timed too when published


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
    """Every network and execution strategy of one backbone shape; the reference first."""
    masked = masked_network(shape, NUM_DOMAINS, budgets[0], seed=1)
    out = [
        reference(shape),
        reference_ort(shape),
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
        pruned = prune_to_union(masked_network(shape, NUM_DOMAINS, budget, seed=10 + i))
        out += pruned_cases(pruned, "BAP pruned", budget)
    return out


ORT = ", ONNX Runtime"


def reference(shape: Shape) -> Case:
    single = masked_network(shape, 1, 1.0, seed=0)
    return Case("single-domain ResNet-26", "full", None, 0, executed_macs(single), _on(single, 0))


def reference_ort(shape: Shape) -> Case:
    single = masked_network(shape, 1, 1.0, seed=0)
    for masks in single.gated_masks():  # it computes every filter either way; its graph is all-on
        masks.fill_(1.0)
    return Case(
        "single-domain ResNet-26", "full" + ORT, None, 0, executed_macs(single), _ort(single)
    )


def _ort(view: MultiDomainResNet) -> Callable[[Tensor], object]:
    """One domain's view (or a one-domain network) compiled and run as the server runs it."""
    session = make_session(domain_graph(view))
    return lambda x: session.run(None, {"x": x.numpy()})


def pruned_cases(pruned: MultiDomainResNet, network: str, budget: float) -> list[Case]:
    """A pruned network run as union + mask, as each domain's own filters, and mixed."""
    union = Case(
        network,
        "union + mask",
        budget,
        0,
        executed_macs(pruned),
        _on(pruned, 0),
        domain_fraction(pruned, 0),
    )
    views = [
        Case(
            network,
            "own filters",
            budget,
            d,
            executed_macs(view),
            _on(view, 0),
            domain_fraction(pruned, d),
        )
        for d in range(len(pruned.domain_names))
        for view in [domain_view(pruned, d).eval()]
    ]
    compiled = [
        Case(
            network,
            "own filters" + ORT,
            budget,
            d,
            executed_macs(view),
            _ort(view),
            domain_fraction(pruned, d),
        )
        for d in range(len(pruned.domain_names))
        for view in [domain_view(pruned, d).eval()]
    ]
    mixed = Case(network, "mixed batch", budget, "all", executed_macs(pruned), _mixed(pruned))
    return [union, *views, *compiled, mixed]


def bundled_cases(store: Path, name: str) -> tuple[str, Shape, list[Case]] | None:
    """The real bundled model, if one has been published, with a reference of its shape."""
    try:
        manifest, model = load_version(store, name)
    except (ArtifactError, OSError) as exc:
        log.info("model: no bundled model to time (%s)", exc)
        return None
    shape = Shape(manifest.spec.input_size, manifest.spec.width)
    label = f"bundled {name} {manifest.version}"
    real = [reference(shape), reference_ort(shape), *pruned_cases(model, label, manifest.budget)]
    return f"{label} ({shape.label})", shape, real


def _on(model: MultiDomainResNet, domain: int) -> Callable[[Tensor], object]:
    return lambda x: model(x, domain)


def _mixed(model: MultiDomainResNet) -> Callable[[Tensor], object]:
    """Images assigned to the domains round-robin, so every batch of 4+ mixes all of them."""

    def run(x: Tensor) -> object:
        domains = torch.arange(len(x), dtype=torch.long) % len(model.domain_names)
        return model.forward_mixed(x, domains)

    return run


def groups(settings: Settings) -> Iterator[tuple[str, Shape, list[Case]]]:
    """(label, input shape, cases) per backbone shape, built one at a time to bound memory."""
    for shape in settings.shapes:
        yield shape.label, shape, cases(shape, settings.budgets)
    if settings.bundled and (real := bundled_cases(*settings.bundled)) is not None:
        yield real


def _time_by_runtime(cases: list[Case], x: Tensor, settings: Settings) -> list[Timing]:
    """Each runtime's cases timed in their own interleaved rounds. Right after a torch call
    its OpenMP threads still spin, and ONNX Runtime's after its own; interleaved, each runtime
    ran beside the other's spinning threads, which a server (one runtime) never does."""
    timings: dict[int, Timing] = {}
    for compiled in (False, True):
        picked = [i for i, c in enumerate(cases) if c.strategy.endswith(ORT) == compiled]
        got = time_calls(
            [partial(cases[i].run, x) for i in picked],
            settings.seconds_per_case * len(picked),
            settings.warmup,
            settings.min_reps,
        )
        timings.update(zip(picked, got, strict=True))
    return [timings[i] for i in range(len(cases))]


def measure(settings: Settings) -> dict[str, Any]:
    """One row per (shape, batch, case): latency, throughput, memory, speedup vs MACs ratio."""
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for label, shape, shape_cases in groups(settings):
            for batch in settings.batches:
                x = torch.randn(batch, 3, shape.input_size, shape.input_size)
                timings = _time_by_runtime(shape_cases, x, settings)
                for case, timing in zip(shape_cases, timings, strict=True):
                    rows.append(
                        _row(label, batch, case, timing, timings[0], shape_cases[0].macs, x)
                    )
                log.info("model: %s batch %d done", label, batch)
    return {"rows": rows}


def _row(
    label: str, batch: int, case: Case, timing: Timing, base: Timing, base_macs: float, x: Tensor
) -> dict[str, Any]:
    return {
        "shape": label,
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
        "speedup": base.median / timing.median,
        "cpu_ms": timing.cpu * 1e3,
        "cpu_speedup": base.cpu / timing.cpu,
        "peak_mib": peak_rss_delta(lambda: case.run(x)) / 2**20,
    }
