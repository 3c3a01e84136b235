"""Recovery after the masks are final, and the score momentum knob: each changes the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_store import DomainBatchNorm, baseline_cost, cost_fraction, filter_costs
from tests.training.conftest import tiny_config
from training.recovery import recalibrate_bn
from training.trainer import train


def _run(tmp_path: Path, name: str, **changes):
    torch.manual_seed(0)
    return train(tiny_config(**changes), tmp_path / name, progress=False)


@pytest.mark.slow
def test_score_momentum_changes_the_learned_scores(tmp_path: Path) -> None:
    flat = _run(tmp_path, "m0", score_momentum=0.0)
    heavy = _run(tmp_path, "m9", score_momentum=0.9)
    assert any(not torch.equal(a, b) for a, b in zip(flat.scores, heavy.scores, strict=True))


def test_recovery_tunes_bn_and_heads_but_not_convs_or_masks(tmp_path: Path) -> None:
    none = _run(tmp_path, "r0", recovery_epochs=0.0, bn_recalibration_batches=0)
    tuned = _run(tmp_path, "r1", recovery_epochs=2.0, bn_recalibration_batches=0)
    a, b = none.model.state_dict(), tuned.model.state_dict()
    convs = [k for k in a if k == "stem.weight" or ".conv" in k]
    assert convs and all(torch.equal(a[k], b[k]) for k in convs)
    assert all(
        torch.equal(x.masks, y.masks)
        for x, y in zip(none.model.blocks, tuned.model.blocks, strict=True)
    )
    heads = [k for k in a if k.startswith("heads.")]
    assert heads and any(not torch.equal(a[k], b[k]) for k in heads)


def test_recalibrated_statistics_are_the_mean_over_the_batches(tmp_path: Path) -> None:
    result = _run(tmp_path, "cal", recovery_epochs=0.0, bn_recalibration_batches=0)
    model, data = result.model, result.data
    first = next(m for m in model.modules() if isinstance(m, DomainBatchNorm))
    seen: list[torch.Tensor] = []
    hook = first.register_forward_pre_hook(lambda _m, args: seen.append(args[0].mean((0, 2, 3))))
    batches, size = 3, 32  # 96 training images per tiny domain: every image once
    recalibrate_bn(model, data, batches, size, seed=5)
    hook.remove()
    for d in range(len(data)):
        expected = torch.stack(seen[d * batches : (d + 1) * batches]).mean(0)
        torch.testing.assert_close(first.running_mean[d], expected, rtol=1e-5, atol=1e-6)
    assert not model.training  # the caller's mode is kept


def test_recalibration_is_deterministic(tmp_path: Path) -> None:
    result = _run(tmp_path, "det", recovery_epochs=0.0, bn_recalibration_batches=0)
    recalibrate_bn(result.model, result.data, 2, 16, seed=1)
    once = [b.clone() for b in result.model.buffers()]
    recalibrate_bn(result.model, result.data, 2, 16, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(once, result.model.buffers(), strict=True))


def _costs(model) -> list[float]:
    spec = model.spec
    return [
        cost_fraction(spec, "macs", d, [b.masks[d] for b in model.blocks]).item()
        for d in range(len(spec.domains))
    ]


@pytest.mark.slow
def test_fill_to_budget_hands_back_the_dropped_union_filters(tmp_path: Path) -> None:
    kept = _run(tmp_path, "f0", fill_to_budget=False, budget=0.5)
    filled = _run(tmp_path, "f1", fill_to_budget=True, budget=0.5)
    before, after = _costs(kept.model), _costs(filled.model)
    assert all(a <= 0.5 + 1e-9 for a in after)
    assert all(a >= b for a, b in zip(after, before, strict=True))
    assert any(a > b for a, b in zip(after, before, strict=True))
    union = [b.masks.amax(0) for b in kept.model.blocks]
    assert all(  # the union, and so the pruned model, does not grow
        torch.equal(b.masks.amax(0), u) for b, u in zip(filled.model.blocks, union, strict=True)
    )
    # maximal: no dropped union filter of any domain still fits in what its budget leaves
    spec, costs = filled.model.spec, filter_costs(filled.model.spec, "macs")
    for d, cost in enumerate(after):
        room = (0.5 - cost) * baseline_cost(spec, "macs", d)
        for b, block in enumerate(filled.model.blocks):
            dropped = (union[b] > 0) & (block.masks[d] == 0)
            assert not dropped.any() or costs[b][dropped].min() > room
