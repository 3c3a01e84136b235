"""Hand a trained model to the store: enforce the budget, prune, verify, measure, publish."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from model_store import Manifest, MultiDomainResNet, publish_version

from .config import TrainConfig
from .data import DomainData, eval_batches
from .evaluate import accuracy, domain_metrics, model_totals
from .prune import export_pruned
from .trainer import TrainResult

log = logging.getLogger(__name__)
EQUIVALENCE_TOLERANCE = 1e-4


def provenance() -> dict[str, Any]:
    """Which code and machine produced a version (the commit is best-effort)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }


@torch.inference_mode()
def check_equivalence(
    masked: MultiDomainResNet, pruned: MultiDomainResNet, data: list[DomainData]
) -> float:
    """Max |logit difference| between masked and pruned networks on each domain's test images."""
    worst = 0.0
    for d, domain in enumerate(data):
        x, _ = next(eval_batches(domain, pruned.spec.domains[d].preprocess, 64))
        worst = max(worst, float((masked(x, d) - pruned(x, d)).abs().max()))
    if worst > EQUIVALENCE_TOLERANCE:
        raise RuntimeError(
            f"pruned network differs from the masked one by {worst:g}; not publishing"
        )
    return worst


def build_manifest(
    config: TrainConfig, pruned: MultiDomainResNet, data: list[DomainData], extra: dict[str, Any]
) -> Manifest:
    accuracies = {d.name: round(accuracy(pruned, d, config.eval_batch_size), 6) for d in data}
    return Manifest(
        name=config.name,
        spec=pruned.spec,
        budget=config.budget,
        budget_unit=config.budget_unit,
        domains=domain_metrics(pruned, config.budget_unit, accuracies),
        totals=model_totals(pruned),
        training={"config": config.to_dict(), **extra},
        provenance=provenance(),
    )


def publish_result(
    config: TrainConfig, result: TrainResult, store: Path
) -> tuple[Manifest, MultiDomainResNet]:
    """Export, verify and publish; returns the manifest (with its version) and the pruned model."""
    masked = result.model.eval()
    pruned, switched_off = export_pruned(masked, result.scores, config.budget, config.budget_unit)
    diff = check_equivalence(masked, pruned, result.data)
    extra = {"budget_guarantee_switched_off": switched_off, "masked_vs_pruned_max_abs_diff": diff}
    manifest = build_manifest(config, pruned, result.data, extra)
    publish_version(store, pruned, manifest)
    log.info("published store=%s name=%s version=%s", store, manifest.name, manifest.version)
    return manifest, pruned
