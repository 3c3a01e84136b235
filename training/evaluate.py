"""Evaluation: per-domain accuracy, parameters, MACs and budget use; model totals; Decathlon S.

Accuracy runs the test split through `data.eval_batches`, the same centre crop and normalisation
as serving. Every cost figure comes from `model_store.nets.cost`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from model_store import (
    DomainMetrics,
    MultiDomainResNet,
    Preprocess,
    baseline_cost,
    cost_fraction,
    domain_cost,
    independent_parameters,
    model_parameters,
    single_domain_parameters,
)

from .data import DomainData, eval_batches

log = logging.getLogger(__name__)


@torch.inference_mode()
def accuracy(
    model: MultiDomainResNet, data: DomainData, batch_size: int = 256, workers: int | None = None
) -> float:
    """Top-1 accuracy of `data`'s domain on its test split (`workers`: loader processes)."""
    index = model.spec.domain_index(data.name)
    pre = model.spec.domains[index].preprocess
    was_training = model.training
    model.eval()
    result = split_accuracy(lambda x: model(x, index), data, pre, batch_size, workers)
    model.train(was_training)
    return result


def split_accuracy(
    run: Callable[[Tensor], Any],
    data: DomainData,
    pre: Preprocess,
    batch_size: int = 256,
    workers: int | None = None,
) -> float:
    """Top-1 accuracy of `run` (a test batch -> its logits, torch or numpy) on `data`'s test
    split, cut as serving cuts it: the torch network, its compiled graphs and their int8 or bf16
    runs are all measured by this one loop."""
    correct = total = 0
    # A test set at 224 px takes minutes: the bar shows at INFO (the CLI's default), not in tests.
    with tqdm(
        total=len(data.test),
        desc=f"evaluate {data.name}",
        unit="image",
        leave=False,
        disable=not log.isEnabledFor(logging.INFO),
    ) as bar:
        for x, y in eval_batches(data, pre, batch_size, workers):
            correct += int((np.asarray(run(x)).argmax(1) == y.numpy()).sum())
            total += len(y)
            bar.update(len(y))
    log.info("accuracy domain=%s %.4f on %d test images", data.name, correct / max(total, 1), total)
    return correct / max(total, 1)


def domain_metrics(
    model: MultiDomainResNet, unit: str, accuracies: dict[str, float] | None = None
) -> dict[str, DomainMetrics]:
    """Per domain: accuracy, parameters and MACs it runs, and its cost fraction in `unit`."""
    out = {}
    for d, name in enumerate(model.spec.domain_names):
        masks = [m[d].double() for m in model.gated_masks()]
        out[name] = DomainMetrics(
            accuracy=None if accuracies is None else accuracies.get(name),
            parameters=int(domain_cost(model.spec, "params", d, masks).item()),
            macs=int(domain_cost(model.spec, "macs", d, masks).item()),
            cost_fraction=round(float(cost_fraction(model.spec, unit, d, masks)), 6),
        )
    return out


def model_totals(model: MultiDomainResNet) -> dict[str, float]:
    """Stored parameters against one single-domain ResNet-26 and N independent models."""
    spec = model.spec
    stored = model_parameters(spec)
    single = single_domain_parameters(spec)
    independent = independent_parameters(spec)
    macs = [baseline_cost(spec, "macs", d) for d in range(len(spec.domains))]
    return {
        "parameters": stored,
        "single_domain_parameters": single,
        "independent_parameters": independent,
        "parameters_vs_single_domain": round(stored / single, 6),
        "parameters_vs_independent": round(stored / independent, 6),
        "baseline_macs": sum(macs) / len(macs),
    }


def decathlon_score(errors: Sequence[float], baseline_errors: Sequence[float]) -> float:
    """S = sum_d 1000 * (max(0, Emax - E) / Emax)^2 with Emax = 2 x the baseline error.

    A domain whose baseline error is 0 has no room to score; it is skipped.
    """
    score = 0.0
    for e, base in zip(errors, baseline_errors, strict=True):
        emax = 2.0 * base
        if emax > 0:
            score += 1000.0 * (max(0.0, emax - e) / emax) ** 2
    return score


def results_table(metrics: dict[str, DomainMetrics], budget: float, unit: str) -> str:
    """A fixed-width table of the published figures, requested budget beside realised."""
    head = (
        f"{'domain':<14}{'accuracy':>9}{'params':>11}{'MACs':>14}{unit + ' frac':>12}{'budget':>8}"
    )
    rows = [head, "-" * len(head)]
    for name, m in metrics.items():
        acc = "-" if m.accuracy is None else f"{m.accuracy:.4f}"
        rows.append(
            f"{name:<14}{acc:>9}{m.parameters:>11,}{m.macs:>14,}{m.cost_fraction:>12.3f}{budget:>8.2f}"
        )
    return "\n".join(rows)
