"""Hand a trained model to the store: enforce the budget, prune, verify, measure, publish."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from model_store import Manifest, MultiDomainResNet, export_graphs, publish_version

from .config import TrainConfig
from .data import DomainData, eval_batches
from .evaluate import accuracy, domain_metrics, model_totals
from .prune import export_pruned
from .trainer import TrainResult

log = logging.getLogger(__name__)
EQUIVALENCE_TOLERANCE = 1e-4
MAX_EXPORT_COST_CUT = 0.03  # of a single-domain network's cost, per domain
MAX_EXPORT_ACCURACY_DROP = 0.01  # absolute, per domain


class ExportRefused(ValueError):
    """The budget was reached by the export's blind cut rather than by training."""


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
    config: TrainConfig, pruned: MultiDomainResNet, data: list[DomainData]
) -> Manifest:
    accuracies = {
        d.name: round(accuracy(pruned, d, config.eval_batch_size, config.workers), 6) for d in data
    }
    return Manifest(
        name=config.name,
        spec=pruned.spec,
        budget=config.budget,
        budget_unit=config.budget_unit,
        domains=domain_metrics(pruned, config.budget_unit, accuracies),
        totals=model_totals(pruned),
        # the config as given, and the data recipe its None fields resolved to
        training={
            "config": config.to_dict(),
            "data": {"augment": config.augmentation, "normalize": config.normalization},
        },
        provenance=provenance(),
        sources={d.name: entry for d, entry in zip(data, config.domains, strict=True)},
    )


BACKBONE = "backbone.safetensors"  # the unpruned shared convs, kept beside a version


def shared_conv_keys(model: MultiDomainResNet) -> list[str]:
    """State-dict keys of the convs every domain shares (frozen after pretraining): every conv,
    in every architecture."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def backbone(model: MultiDomainResNet) -> bytes:
    """The unpruned network's shared (frozen) convs, as safetensors bytes."""
    state = model.state_dict()
    return save({k: state[k].detach().cpu().contiguous() for k in shared_conv_keys(model)})


def publish_result(
    config: TrainConfig, result: TrainResult, store: Path, force: bool = False
) -> tuple[Manifest, MultiDomainResNet]:
    """Export, verify and publish; returns the manifest (with its version) and the pruned model.

    A domain the export had to cut by more than MAX_EXPORT_COST_CUT of its cost, or that lost
    more than MAX_EXPORT_ACCURACY_DROP of accuracy through the cut, is refused unless `force`.
    """
    trained = result.model.eval()  # the masks as training left them, kept as they are
    masked = copy.deepcopy(trained)  # the budget guarantee switches filters off in this copy
    pruned, cuts = export_pruned(masked, result.scores, config.budget, config.budget_unit)
    diff = check_equivalence(masked, pruned, result.data)
    manifest = build_manifest(config, pruned, result.data)
    export, problems = {}, []
    for domain in result.data:
        cut = cuts[domain.name]
        after = manifest.domains[domain.name].accuracy
        before = (
            accuracy(trained, domain, config.eval_batch_size, config.workers)
            if cut.filters
            else after
        )
        export[domain.name] = {
            "filters_switched_off": cut.filters,
            "cost_trained": round(cut.cost_trained, 4),
            "cost_exported": round(cut.cost_exported, 4),
            "accuracy_trained": round(before, 6),
            "accuracy_exported": after,
        }
        log.info("export domain=%s %s", domain.name, export[domain.name])
        if cut.cost_cut > MAX_EXPORT_COST_CUT or before - after > MAX_EXPORT_ACCURACY_DROP:
            problems.append(
                f"{domain.name}: the export cut {cut.cost_cut:.3f} of its cost "
                f"({cut.cost_trained:.3f} -> {cut.cost_exported:.3f}) and accuracy "
                f"{before:.4f} -> {after:.4f}"
            )
    manifest.training.update({"export": export, "masked_vs_pruned_max_abs_diff": diff})
    if result.pretrained:  # the file the shared convs came from: SHA-256, arch, key format
        manifest.training["pretrained"] = result.pretrained
    if problems and not force:
        raise ExportRefused(
            "not publishing: training did not reach the budget "
            f"{config.budget} ({config.budget_unit}) by itself; " + "; ".join(problems) + ". "
            "Train longer (--epochs), raise dual_lr, or loosen --budget; or publish this run "
            "anyway with --resume --force"
        )
    # the server runs the graphs; the unpruned shared convs let add-domain --grow use filters
    # that pruning removed
    files = {**export_graphs(pruned), BACKBONE: backbone(trained)}
    publication = publish_version(store, pruned, manifest, extra_files=files)
    log.info("published store=%s name=%s version=%s", store, manifest.name, manifest.version)
    if publication.note:
        log.warning("%s", publication.note)
    return manifest, pruned
