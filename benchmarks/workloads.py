"""The networks under test: random weights with BAP's shape, and a store that serves them.

Timing does not depend on what the weights learned, only on which filters exist, so a full
network with random BN statistics and random masks stands in for a trained one. The masks are
nested like BAP's: every domain keeps a random 90% of one common union of filters, and the union
is sized so that its MACs hit the budget (so every domain lands somewhat under it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model_store import (
    DomainMetrics,
    DomainSpec,
    Manifest,
    ModelSpec,
    MultiDomainResNet,
    Preprocess,
    baseline_cost,
    build_model,
    cost_fraction,
    domain_cost,
    export_graphs,
    filter_costs,
    model_parameters,
    publish_version,
)

SHARE = 0.9  # each domain's share of the union (BAP's sharing loss pushes this towards 1)
CLASSES = 10


@dataclass(frozen=True)
class Shape:
    """Input side, width multiplier and architecture of the backbone under test."""

    input_size: int
    width: float
    arch: str = "resnet26_decathlon"

    @property
    def label(self) -> str:
        arch = "" if self.arch == "resnet26_decathlon" else f"{self.arch}, "
        return f"{arch}{self.input_size}px, width {self.width:g}"


HEADLINE = Shape(64, 1.0)  # the Decathlon setting perf-anchors.md measured
BUNDLED = Shape(32, 0.5)  # the shape of the bundled embedded model


def bench_spec(shape: Shape, num_domains: int) -> ModelSpec:
    pre = Preprocess(
        resize=shape.input_size + shape.input_size // 8,
        crop=shape.input_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    domains = tuple(
        DomainSpec(f"d{i}", tuple(f"c{j}" for j in range(CLASSES)), pre) for i in range(num_domains)
    )
    return ModelSpec(
        domains=domains, width=shape.width, input_size=shape.input_size, arch=shape.arch
    )


@torch.no_grad()
def masked_network(shape: Shape, num_domains: int, budget: float, seed: int) -> MultiDomainResNet:
    """The full multi-domain network with random BN statistics and nested budget masks."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(bench_spec(shape, num_domains))
    for module in model.modules():
        if hasattr(module, "running_var"):
            module.running_mean.normal_(0.0, 0.1, generator=g)
            module.running_var.uniform_(0.5, 2.0, generator=g)
            module.weight.normal_(1.0, 0.2, generator=g)
            module.bias.normal_(0.0, 0.1, generator=g)
    spec = model.spec
    gated = float(sum(c.sum() for c in filter_costs(spec, "macs")))
    fixed = baseline_cost(spec, "macs", 0) - gated
    keep = min(1.0, max(0.0, (budget * baseline_cost(spec, "macs", 0) - fixed) / gated))
    for masks in model.gated_masks():
        n = masks.shape[1]
        union = torch.randperm(n, generator=g)[: max(1, round(keep * n))]
        masks.zero_()
        for d in range(num_domains):
            mine = union[torch.rand(len(union), generator=g) < SHARE]
            masks[d, mine if len(mine) else union[:1]] = 1.0
    return model.eval()


@torch.no_grad()
def unpruned_network(shape: Shape, seed: int) -> MultiDomainResNet:
    """A full one-domain network (its domain is d0) with random BN statistics and every filter
    on: one independently fine-tuned model, as a user serving one network per domain has."""
    one = masked_network(shape, 1, 1.0, seed=seed)
    for mask in one.gated_masks():
        mask.fill_(1.0)
    return one


def executed_macs(model: MultiDomainResNet, domain: int = 0) -> float:
    """MACs one image costs on this network as it runs: every filter it holds is computed
    (a mask multiplies after the conv), so count all of them, not just the domain's."""
    ones = [torch.ones(k, dtype=torch.float64) for k in model.spec.gated_filters()]
    return float(domain_cost(model.spec, "macs", domain, ones))


def domain_fraction(model: MultiDomainResNet, domain: int) -> float:
    """The domain's own cost fraction (its mask), as the budget guarantee counts it."""
    masks = [m[domain].to(torch.float64) for m in model.gated_masks()]
    return float(cost_fraction(model.spec, "macs", domain, masks))


def publish(
    store: Path, model: MultiDomainResNet, name: str, budget: float, graphs: bool = False
) -> str:
    """Publish `model` as `name` (made CURRENT), with its measured costs in the manifest (and
    with `graphs`, its compiled graphs, as training publishes them)."""
    spec = model.spec
    domains = {}
    for i, d in enumerate(spec.domain_names):
        masks = [m[i].to(torch.float64) for m in model.gated_masks()]
        domains[d] = DomainMetrics(
            accuracy=None,
            parameters=int(domain_cost(spec, "params", i, masks)),
            macs=int(domain_cost(spec, "macs", i, masks)),
            cost_fraction=float(cost_fraction(spec, "macs", i, masks)),
        )
    manifest = Manifest(
        name=name,
        spec=spec,
        budget=budget,
        budget_unit="macs",
        domains=domains,
        totals={"parameters": float(model_parameters(spec))},
        provenance={"source": "benchmarks: random weights, random nested masks"},
    )
    files = export_graphs(model) if graphs else {}
    return publish_version(store, model, manifest, extra_files=files).version


def png_bytes(side: int, seed: int) -> bytes:
    """A random RGB PNG of side x side pixels (what a client uploads)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()
