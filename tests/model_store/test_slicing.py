"""Correctness of pruning: the pruned network computes exactly what the masked network does,
for every architecture."""

import pytest
import torch

from model_store import (
    build_model,
    domain_filters,
    domain_view,
    prune_to_union,
    union_filters,
)
from tests.conftest import randomize, tiny_input, tiny_spec

TOL = 1e-4


@pytest.mark.parametrize("keep_prob", [0.0, 0.15, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_logits_equal_masked_logits_for_every_domain(
    arch: str, keep_prob: float, seed: int
) -> None:
    masked = randomize(build_model(tiny_spec(arch=arch)), keep_prob, seed)
    pruned = prune_to_union(masked).eval()
    x = tiny_input(masked.spec, 5)
    with torch.no_grad():
        for d in range(len(masked.spec.domains)):
            diff = (masked(x, d) - pruned(x, d)).abs().max().item()
            assert diff < TOL, f"domain {d}: max abs diff {diff}"
            own = domain_view(masked, d)
            assert (masked(x, d) - own(x, 0)).abs().max().item() < TOL


def test_pruned_training_forward_equals_masked(arch: str) -> None:
    """In training mode too (batch statistics): a removed filter was an exact zero."""
    masked = randomize(build_model(tiny_spec(arch=arch)), 0.4, seed=7)
    pruned = prune_to_union(masked)
    x = tiny_input(masked.spec, 6)
    masked.train(), pruned.train()
    with torch.no_grad():
        for d in range(len(masked.spec.domains)):
            assert (masked(x, d) - pruned(x, d)).abs().max().item() < TOL


def test_removed_filters_are_exactly_those_no_domain_uses(arch: str) -> None:
    masked = randomize(build_model(tiny_spec(arch=arch)), 0.3, seed=3)
    pruned = prune_to_union(masked)
    gates = zip(masked.gated_masks(), pruned.gated_masks(), union_filters(masked), strict=True)
    for i, (before, after, kept) in enumerate(gates):
        used = before.bool().any(dim=0)
        assert kept.tolist() == used.nonzero().flatten().tolist()
        assert pruned.spec.gated_filters()[i] == int(used.sum())
        # each domain's served mask is its trained mask restricted to the kept filters
        assert torch.equal(after, before[:, kept])
        # and every kept filter is used by someone
        assert bool(after.bool().any(dim=0).all())


def test_domain_view_holds_only_that_domains_filters(arch: str) -> None:
    masked = randomize(build_model(tiny_spec(arch=arch)), 0.5, seed=4)
    for d in range(3):
        view = domain_view(masked, d)
        assert view.spec.domain_names == (masked.spec.domain_names[d],)
        assert list(view.spec.gated_filters()) == [len(k) for k in domain_filters(masked, d)]
        assert all(bool(m.all()) for m in view.gated_masks())


def test_mixed_batch_equals_each_image_alone(arch: str) -> None:
    pruned = prune_to_union(randomize(build_model(tiny_spec(arch=arch)), 0.5, seed=5)).eval()
    x = tiny_input(pruned.spec, 9)
    domains = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1])
    with torch.no_grad():
        mixed = pruned.forward_mixed(x, domains)
        for i, d in enumerate(domains.tolist()):
            alone = pruned(x[i : i + 1], d)[0]
            assert mixed[i].shape == alone.shape
            assert (mixed[i] - alone).abs().max().item() < TOL


def test_mixed_batch_does_not_leak_between_domains(arch: str) -> None:
    """Changing one image's domain changes only that image's output."""
    spec = tiny_spec(classes=(4,), arch=arch)
    pruned = prune_to_union(randomize(build_model(spec), 0.5, seed=6)).eval()
    x = tiny_input(spec, 4)
    with torch.no_grad():
        a = pruned.forward_mixed(x, torch.tensor([0, 1, 2, 0]))
        b = pruned.forward_mixed(x, torch.tensor([0, 1, 2, 1]))
    for i in range(3):
        assert torch.allclose(a[i], b[i], atol=1e-6)
    assert not torch.allclose(a[3], b[3])


def test_mixed_batch_refuses_training_mode() -> None:
    model = build_model(tiny_spec()).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.forward_mixed(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))


@pytest.mark.parametrize("keep_prob", [0.0, 0.3, 1.0])
def test_padded_filters_change_no_output_bit(arch: str, keep_prob: float) -> None:
    """Zero filters added for the runtime's SIMD blocks: counts rounded up, outputs the same (an
    added term is an exact zero; only a kernel's summation order may move the last bits)."""
    from model_store.nets.slicing import pad_filters

    pruned = prune_to_union(randomize(build_model(tiny_spec(arch=arch)), keep_prob, seed=5)).eval()
    padded = pad_filters(pruned, 8)
    full = pruned.spec.unpruned().gated_filters()
    pairs = zip(pruned.spec.gated_filters(), padded.spec.gated_filters(), full, strict=True)
    for before, after, most in pairs:
        assert (after % 8 == 0 or after == most) and 0 <= after - before < 8
    x = tiny_input(pruned.spec, 6)
    domains = torch.tensor([0, 1, 2, 1, 0, 2])
    with torch.no_grad():
        for d in range(len(pruned.spec.domains)):
            assert torch.allclose(pruned(x, d), padded(x, d), rtol=0, atol=1e-6)
        mixed = zip(pruned.forward_mixed(x, domains), padded.forward_mixed(x, domains), strict=True)
        for a, b in mixed:
            assert torch.allclose(a, b, rtol=0, atol=1e-6)
