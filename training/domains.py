"""Add a domain to a published version without retraining the others, or remove one.

`add_domain`: the new domain learns only its own switches, BatchNorms and head on the frozen
convs of the version. Its switches cover only the filters the version kept, so the stored
convs do not grow; a dual-ascent multiplier pushes its cost under the budget while it trains,
and the export's guarantee cuts whatever is left. Then, masks frozen, its BN statistics are
recalibrated and its BN + head fine-tuned (recovery), it is evaluated on its test split, and a
new version is published holding every old domain's tensors exactly as they were: the publish
step copies them back and checks every tensor and every old domain's outputs bit for bit.

`remove_domain`: drops a domain and the filters no remaining domain uses; the remaining
domains' outputs are checked against the old version within the pruned == masked tolerance.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load
from tqdm import tqdm

from model_store import (
    Manifest,
    MultiDomainResNet,
    Publication,
    build_model,
    cost_fraction,
    current_version,
    expand_network,
    export_graphs,
    filter_costs,
    load_version,
    open_version,
    publish_version,
    slice_network,
    union_filters,
)

from .data import DomainData, RoundRobin, TrainStream
from .evaluate import accuracy, domain_metrics, model_totals
from .prune import enforce_budget
from .publish import BACKBONE, EQUIVALENCE_TOLERANCE, provenance
from .recovery import recalibrate_bn
from .sources import load_domain
from .switches import binary_step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddDomainSettings:
    """How the new domain trains; the defaults suit a small domain on CPU."""

    epochs: float = 3.0
    recovery_epochs: float = 1.0
    batch_size: int = 128
    lr: float = 0.01
    score_lr: float = 0.1
    dual_lr: float = 1.0
    score_init: float = 0.01
    bn_batches: int = 50
    seed: int = 0


def grown(
    old: MultiDomainResNet, data: DomainData, normalization: str = "data"
) -> MultiDomainResNet:
    """The old network with one more domain: its tensors copied, the new domain's BN affines
    the mean of the old domains', its statistics and head fresh, every kept filter on. The new
    domain is normalised as the version's training run normalised its domains."""
    spec = old.spec.with_domains((*old.spec.domains, data.domain_spec(normalization)))
    new = build_model(spec)
    old_state, new_state = old.state_dict(), new.state_dict()
    with torch.no_grad():
        for key, value in old_state.items():
            target = new_state[key]
            if target.shape == value.shape:
                target.copy_(value)
            else:  # a per-domain stack: the old rows, then the new domain's
                target[: len(value)] = value
                if key.endswith((".weight", ".bias")) and "heads." not in key:
                    target[len(value)] = value.mean(dim=0)
                elif key.endswith(".masks"):
                    target[len(value)] = 1.0
    return new


def _restore(new: MultiDomainResNet, old: MultiDomainResNet) -> None:
    """Every tensor the old network has, put back exactly (rows of per-domain stacks)."""
    new_state = new.state_dict()
    with torch.no_grad():
        for key, value in old.state_dict().items():
            new_state[key][: len(value)] = value


def _probe(model: MultiDomainResNet) -> torch.Tensor:
    """The seeded random batch old and new networks are compared on."""
    side = model.spec.input_size
    return torch.randn(8, 3, side, side, generator=torch.Generator().manual_seed(0))


def unchanged_check(old: MultiDomainResNet, new: MultiDomainResNet) -> None:
    """Every old tensor and every old domain's logits are bit-identical in the new network."""
    new_state = new.state_dict()
    for key, value in old.state_dict().items():
        if not torch.equal(new_state[key][: len(value)], value):
            raise RuntimeError(f"{key} changed for the old domains; not publishing")
    x = _probe(old)
    with torch.no_grad():
        for d, name in enumerate(old.spec.domain_names):
            if not torch.equal(old.eval()(x, d), new.eval()(x, d)):
                raise RuntimeError(f"{name}'s outputs changed; not publishing")


def _train_new_domain(
    model: MultiDomainResNet,
    data: DomainData,
    budget: float,
    unit: str,
    s: AddDomainSettings,
    epochs: float,
    switches: bool,
    augment: str,
) -> list[torch.Tensor] | None:
    """Train the last domain's BN rows and head, and with `switches` its switch scores (live
    straight-through masks, cost under `budget` by dual ascent); else with its stored masks.
    Batches are shuffled passes over the training split, augmented by the version's recipe.
    Returns the final scores (with switches)."""
    d, spec = len(model.spec.domains) - 1, model.spec
    pre = spec.domains[d].preprocess
    stacks = [p for n, p in model.named_parameters() if "bn" in n]  # (domains, channels)
    head = list(model.heads[d].parameters())
    scores = None
    groups: list[dict[str, Any]] = [{"params": stacks + head, "lr": s.lr}]
    if switches:  # spread by BN scale, as training does: the least important filters go first
        gammas = [bn.weight[d].detach().abs() for bn in model.gated_norms()]
        scores = [torch.nn.Parameter(s.score_init * g / g.mean().clamp_min(1e-12)) for g in gammas]
        groups.append({"params": scores, "lr": s.score_lr})
    sgd = torch.optim.SGD(groups, momentum=0.9)
    costs, multiplier = filter_costs(spec, unit), 0.0
    steps = max(1, math.ceil(epochs * len(data.train) / s.batch_size))
    seed = s.seed + int(switches)
    sampler = RoundRobin([data], min(s.batch_size, len(data.train)), seed)
    stream = TrainStream([data], sampler, torch.Generator().manual_seed(seed), augment)
    model.train()
    for _ in tqdm(range(steps), desc="add-domain", leave=False, disable=None):
        x, y, _ = stream.next(0, pre)
        masks = None if scores is None else [binary_step(sc) for sc in scores]
        loss = torch.nn.functional.cross_entropy(model(x, d, masks), y)
        if masks is not None:
            fraction = cost_fraction(spec, unit, d, masks, costs)
            loss = loss + multiplier * fraction
            multiplier = max(0.0, multiplier + s.dual_lr * (float(fraction.detach()) - budget))
        sgd.zero_grad()
        loss.backward()
        sgd.step()  # old domains' rows get zero gradient (no weight decay): they never move
    stream.close()
    return None if scores is None else [sc.detach() for sc in scores]


def _outputs_close(
    old: MultiDomainResNet, new: MultiDomainResNet, domains: list[int] | None = None
) -> float:
    """Max |logit difference| between old domain `domains[j]` and new domain j (default: every
    old domain, same numbers) on the probe batch; refuses past the pruning tolerance."""
    domains = list(range(len(old.spec.domains))) if domains is None else domains
    x = _probe(old)
    with torch.no_grad():
        worst = max(
            float((old.eval()(x, d) - new.eval()(x, j)).abs().max()) for j, d in enumerate(domains)
        )
    if worst > EQUIVALENCE_TOLERANCE:
        raise RuntimeError(f"the kept domains' outputs moved by {worst:g}; not publishing")
    return worst


def add_domain(
    store: Path,
    name: str,
    entry: dict[str, Any],
    budget: float | None = None,
    from_version: str | None = None,
    settings: AddDomainSettings | None = None,
    grow: bool = False,
    backbone: Path | None = None,
) -> tuple[Manifest, Publication]:
    """Train `entry` (a source config with a `name`) onto a published version; publish. With
    `grow` the new domain may also use filters pruning removed (from the unpruned backbone kept
    beside the version, or `backbone`); the stored model then grows by those filters."""
    s = settings or AddDomainSettings()
    started = time.monotonic()
    current = current_version(store, name)
    manifest, pruned = load_version(store, name, from_version)
    old, kept = pruned, _kept_backbone(store, name, manifest)
    if grow:
        if backbone is not None:
            kept = {BACKBONE: Path(backbone).read_bytes()}
        if not kept:
            raise ValueError(
                f"--grow needs the unpruned backbone: {name} {manifest.version} keeps none "
                "(versions published before it was kept have none); pass --backbone PATH, e.g. "
                "a run's pretrained.safetensors"
            )
        old = expand_network(pruned, load(kept[BACKBONE]))
        _outputs_close(pruned, old)
    if entry.get("name") in manifest.spec.domain_names:
        raise ValueError(f"domain {entry['name']!r} is already in {name} {manifest.version}")
    config = manifest.training.get("config", {})
    resize, crop = config.get("resize", manifest.spec.input_size), manifest.spec.input_size
    data = load_domain(entry, resize, crop)
    if not len(data.test):
        raise ValueError(f"domain {data.name!r} has no test images to measure it on")
    budget = manifest.budget if budget is None else budget
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    # the version's data recipe; versions published before it was recorded cropped, flipped
    # and normalised by their data's statistics
    used = manifest.training.get("data", {"augment": "crop_flip", "normalize": "data"})
    augment, normalization = used["augment"], used["normalize"]
    torch.manual_seed(s.seed)
    model = grown(old, data, normalization)
    d = len(model.spec.domains) - 1
    unit = manifest.budget_unit
    recalibrate_bn(model, [data], s.bn_batches, s.batch_size, s.seed, indices=[d])
    scores = _train_new_domain(model, data, budget, unit, s, s.epochs, True, augment)
    assert scores is not None
    with torch.no_grad():
        for mask, sc in zip(model.gated_masks(), scores, strict=True):
            mask[d] = (sc > 0).float()
    full = [torch.cat([torch.zeros(d, len(sc)), sc[None]]) for sc in scores]
    cut = enforce_budget(model, full, budget, unit, domains=[d])[data.name]
    recalibrate_bn(model, [data], s.bn_batches, s.batch_size, s.seed, indices=[d])
    if s.recovery_epochs > 0:  # masks final: BN + head fine-tuned, statistics again
        _train_new_domain(model, data, budget, unit, s, s.recovery_epochs, False, augment)
        recalibrate_bn(model, [data], s.bn_batches, s.batch_size, s.seed, indices=[d])
    _restore(model, old)
    model.eval()
    unchanged_check(old, model)
    growth: dict[str, Any] = {}
    if grow:  # keep the old filters and every filter the new domain uses, nothing else
        keep = union_filters(model)
        model = slice_network(model, keep).eval()
        growth = {
            "filters_added": [
                len(k) - m for k, m in zip(keep, pruned.spec.mid_channels or (), strict=True)
            ],
            "parameters": [model_totals(pruned)["parameters"], model_totals(model)["parameters"]],
            "old_domains_max_abs_diff": _outputs_close(pruned, model),
        }
    acc = round(accuracy(model, data), 6)
    metrics = domain_metrics(model, manifest.budget_unit, {data.name: acc})
    seconds = round(time.monotonic() - started, 1)
    new = Manifest(
        name=manifest.name,
        spec=model.spec,
        budget=manifest.budget,
        budget_unit=manifest.budget_unit,
        domains={**manifest.domains, data.name: metrics[data.name]},
        totals=model_totals(model),
        training={
            **manifest.training,
            "add_domain": {
                "from": manifest.version,
                "domain": entry,
                "budget": budget,
                "settings": asdict(s),
                "filters_cut_by_export": cut.filters,
                "old_domains_bit_identical": not grow,  # grown: within the pruning tolerance
                **({"grow": growth} if grow else {}),
                "seconds": seconds,
            },
        },
        provenance=provenance(),
        sources={**manifest.sources, data.name: entry},
    )
    publication = _publish(store, model, new, kept, current)
    log.info("added domain=%s version=%s accuracy=%.4f", data.name, new.version, acc)
    return new, publication


def remove_domain(
    store: Path, name: str, domain: str, from_version: str | None = None
) -> tuple[Manifest, Publication]:
    """Publish the version without `domain` and without the filters only it used."""
    current = current_version(store, name)
    manifest, old = load_version(store, name, from_version)
    names = list(manifest.spec.domain_names)
    if domain not in names:
        raise ValueError(f"no domain {domain!r} in {name} {manifest.version}; known: {names}")
    if len(names) == 1:
        raise ValueError(f"{domain!r} is the version's only domain")
    keep_domains = [i for i, n in enumerate(names) if n != domain]
    keep = [(m[keep_domains] > 0).any(dim=0).nonzero().flatten() for m in old.gated_masks()]
    new = slice_network(old, keep, keep_domains).eval()
    worst = _outputs_close(old, new, keep_domains)
    out = Manifest(
        name=manifest.name,
        spec=new.spec,
        budget=manifest.budget,
        budget_unit=manifest.budget_unit,
        domains={n: m for n, m in manifest.domains.items() if n != domain},
        totals=model_totals(new),
        training={
            **manifest.training,
            "remove_domain": {
                "from": manifest.version,
                "domain": domain,
                "filters_removed": int(sum(m.shape[1] for m in old.gated_masks()))
                - int(sum(len(k) for k in keep)),
                "remaining_max_abs_diff": worst,
            },
        },
        provenance=provenance(),
        sources={n: e for n, e in manifest.sources.items() if n != domain},
    )
    return out, _publish(store, new, out, _kept_backbone(store, name, manifest), current)


def _publish(
    store: Path, model: MultiDomainResNet, manifest: Manifest, files: dict[str, bytes], current: str
) -> Publication:
    """Publish with fresh graphs (int8 graphs and precision records are not carried: they were
    measured on the old graphs); CURRENT moves only if it still names what it named when the
    command started."""
    files = {**export_graphs(model), **files}
    return publish_version(store, model, manifest, extra_files=files, expect_current=current)


def _kept_backbone(store: Path, name: str, manifest: Manifest) -> dict[str, bytes]:
    """The version's unpruned shared convs, for the version made from it: adding or removing a
    domain never changes them, and a later `--grow` needs them."""
    if BACKBONE not in manifest.files:
        return {}
    return {BACKBONE: open_version(store, name, manifest.version).read(BACKBONE)}
