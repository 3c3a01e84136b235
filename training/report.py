"""The paper-style comparison on one set of domains, from one shared pretrained backbone:

(1) independent fine-tuned single-domain models, (2) frozen backbone + per-domain BN and head,
(3) switches with the budget loss but no sharing loss, (4) BAP at several budgets.
Writes `results.md` (tables, Decathlon-style score against (1), machine and commit) and
`accuracy_vs_budget.png`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model_store import MultiDomainResNet, model_parameters, shared_fraction, slice_network

from .config import TrainConfig
from .data import DomainData
from .evaluate import accuracy, decathlon_score, domain_metrics
from .prune import export_pruned
from .publish import provenance
from .sources import load_domain
from .trainer import train

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One method's figures: per-domain accuracy, MACs, parameters and realised cost fraction."""

    method: str
    budget: float | None
    accuracy: dict[str, float]
    macs: dict[str, int]
    parameters: dict[str, int]
    fraction: dict[str, float]
    union_fraction: float  # cost fraction of the filters the stored model keeps
    stored_parameters: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracy.values()) / len(self.accuracy)


def union_fraction(model: MultiDomainResNet, unit: str) -> float:
    """Cost fraction (averaged over domains' heads) of every filter the network holds."""
    ones = [torch.ones(k, dtype=torch.float64) for k in model.spec.gated_filters()]
    return float(shared_fraction(model.spec, unit, ones))


def _row(
    method: str,
    budget: float | None,
    model: MultiDomainResNet,
    data: list[DomainData],
    cfg: TrainConfig,
    seconds: float,
) -> Row:
    metrics = domain_metrics(model, cfg.budget_unit)
    return Row(
        method=method,
        budget=budget,
        accuracy={d.name: accuracy(model, d, cfg.eval_batch_size) for d in data},
        macs={k: m.macs for k, m in metrics.items()},
        parameters={k: m.parameters for k, m in metrics.items()},
        fraction={k: m.cost_fraction for k, m in metrics.items()},
        union_fraction=union_fraction(model, cfg.budget_unit),
        stored_parameters=model_parameters(model.spec),
        seconds=seconds,
    )


# The Visual Decathlon's published fine-tuning baseline, top-1 accuracy (%) by its datasets'
# names (Rebuffi et al. 2017, as in ../shared/method.md); it scores 2500 over the ten.
DECATHLON_BASELINE = {
    "imagenet12": 59.87,
    "aircraft": 60.34,
    "cifar100": 82.12,
    "daimlerpedcls": 92.82,
    "dtd": 55.53,
    "gtsrb": 97.53,
    "vgg-flowers": 81.41,
    "omniglot": 87.69,
    "svhn": 96.55,
    "ucf101": 51.20,
}


def decathlon_baseline_errors(names: list[str]) -> list[float] | None:
    """Each domain's published baseline error when every domain is a Decathlon dataset named
    as the Decathlon names it (as training/presets/decathlon.json does), else None."""
    if not names or not set(names) <= set(DECATHLON_BASELINE):
        return None
    return [1 - DECATHLON_BASELINE[n] / 100 for n in names]


def on_backbone(config: TrainConfig, backbone: Path, **changes: Any) -> TrainConfig:
    """`config` started from the report's stage-1 network instead: a `pretrained` file gives
    way to `backbone` (a run takes one of them), and the data recipe it implied is pinned, so
    every method trains and serves its images as the pretrained run would."""
    pinned = TrainConfig.from_dict(
        {
            **config.to_dict(),
            "pretrained": None,
            "augment": config.augmentation,
            "normalize": config.normalization,
        }
    )
    return pinned.override(backbone=str(backbone), **changes)


SKIPPABLE = ("frozen", "no-sharing")  # the ablations (2) and (3), which a costly report may drop
WALL_SECONDS = "wall_seconds"  # beside each run: its training time over every report session


class Report:
    """Runs every method of the comparison in `out_dir` (one sub-folder per training run)."""

    def __init__(
        self, config: TrainConfig, out_dir: Path, progress: bool = True, resume: bool = False
    ):
        self.config, self.out, self.progress = config, Path(out_dir), progress
        self.resume = resume  # continue (or just reload) the runs an earlier report left here
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = [load_domain(e, config.resize, config.crop) for e in config.domains]

    def _train(self, tag: str, config: TrainConfig, data: list[DomainData] | None = None):
        """One run, resumed where an earlier report stopped it; its wall time (all sessions
        together) is kept beside it so a resumed report quotes what the run really took."""
        run_dir = self.out / tag
        resume = self.resume and (run_dir / "config.json").is_file()
        clock = run_dir / WALL_SECONDS
        before = float(clock.read_text()) if resume and clock.is_file() else 0.0
        start = time.perf_counter()
        result = train(config, run_dir, resume, data=data or self.data, progress=self.progress)
        seconds = before + time.perf_counter() - start
        clock.write_text(f"{seconds:.1f}\n")
        return result, seconds

    def pretrain(self) -> Path:
        """Stage 1 once; every method below starts from these weights."""
        stage1 = self.config.override(epochs=0.0, recovery_epochs=0.0)  # no masks to recover
        result, seconds = self._train("pretrain", stage1)
        self.pretrained, self.pretrain_seconds = result.model, seconds
        path = self.out / "pretrained.safetensors"
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(path))
        return path

    def independent(self, backbone_seconds: float) -> Row:
        """(1) one fine-tuned model per domain (all weights), from the shared pretrained start."""
        cfg, rows = self.config, []
        full = [torch.arange(k) for k in self.pretrained.spec.gated_filters()]
        for d, (entry, data) in enumerate(zip(cfg.domains, self.data, strict=True)):
            path = self.out / f"single-{data.name}.safetensors"
            single = slice_network(self.pretrained, full, [d])
            save_file({k: v.contiguous() for k, v in single.state_dict().items()}, str(path))
            run = on_backbone(
                cfg,
                path,
                domains=[entry],
                pretrain_epochs=cfg.epochs,
                pretrain_lr=cfg.lr,
                epochs=0.0,
            )
            result, seconds = self._train(f"independent-{data.name}", run, [data])
            rows.append(_row("independent", None, result.model, [data], cfg, seconds))
        merged = Row(
            method="(1) independent fine-tuned models",
            budget=None,
            accuracy={k: v for r in rows for k, v in r.accuracy.items()},
            macs={k: v for r in rows for k, v in r.macs.items()},
            parameters={k: v for r in rows for k, v in r.parameters.items()},
            fraction={k: v for r in rows for k, v in r.fraction.items()},
            union_fraction=1.0,
            stored_parameters=sum(r.stored_parameters for r in rows),
            seconds=sum(r.seconds for r in rows) + backbone_seconds,
        )
        return merged

    def switched(self, method: str, budget: float, backbone: Path, **changes) -> Row:
        """A stage-2 run from the pretrained weights, exported with the budget guarantee."""
        run = on_backbone(self.config, backbone, pretrain_epochs=0.0, budget=budget, **changes)
        result, seconds = self._train(method.split()[0].strip("()") + f"-{budget}", run)
        pruned, _ = export_pruned(result.model, result.scores, budget, run.budget_unit)
        return _row(method, budget, pruned, self.data, run, seconds)

    def run(
        self,
        budgets: list[float],
        epochs_scale: dict[float, float] | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> list[Row]:
        """Every method but the ablations named in `skip` (`SKIPPABLE`: the reference (1) and
        BAP always run); `epochs_scale` lengthens stage 2 at the budgets it names (a tight budget
        needs more steps to get there: docs/results.md measures β = 0.25 at 1.5 and 3 epochs),
        for BAP and baseline (3) alike, and the row's label says so."""
        scale = epochs_scale or {}
        backbone = self.pretrain()
        rows = [self.independent(self.pretrain_seconds)]
        if "frozen" not in skip:
            rows.append(
                self.switched(
                    "(2) frozen backbone, BN + heads", 1.0, backbone, sharing="none", score_lr=0.0
                )
            )

        def at(method: str, budget: float, **changes) -> Row:
            if budget not in scale:
                return self.switched(f"{method} β={budget}", budget, backbone, **changes)
            epochs = self.config.epochs * scale[budget]
            label = f"{method} β={budget}, {epochs:g} stage-2 epochs"
            return self.switched(label, budget, backbone, epochs=epochs, **changes)

        # BAP trains before baseline (3): a report cut short has the method's own rows first.
        bap = [at("(4) BAP", b) for b in budgets]
        if "no-sharing" not in skip:
            rows += [at("(3) budget loss, no sharing", b, sharing="none") for b in budgets if b < 1]
        return rows + bap


def _stage1(config: TrainConfig) -> str:
    if config.backbone and not config.stage1_epochs:
        return f"stage 1 loaded from `{config.backbone}` (not retrained here)"
    return f"{config.stage1_epochs} pretraining epochs"


def render_markdown(
    rows: list[Row], config: TrainConfig, single_params: float, started: float
) -> str:
    """results.md: the comparison table, per-domain detail of every method, and provenance."""
    baseline = rows[0]
    names = list(baseline.accuracy)
    base_err = [1 - baseline.accuracy[n] for n in names]
    published = decathlon_baseline_errors(names)
    head = (
        "| method | β asked | "
        + " | ".join(names)
        + " | mean | S | "
        + ("S (Decathlon baseline) | " if published else "")
        + f"max domain cost | stored model cost (union) | stored params vs one {config.arch} |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        errors = [1 - r.accuracy[n] for n in names]
        scores = [decathlon_score(errors, base_err)]
        if published:
            scores.append(decathlon_score(errors, published))
        lines.append(
            f"| {r.method} | {'-' if r.budget is None else r.budget} | "
            + " | ".join(f"{100 * r.accuracy[n]:.1f}" for n in names)
            + f" | {100 * r.mean_accuracy:.1f} | "
            + "".join(f"{score:.0f} | " for score in scores)
            + f"{max(r.fraction.values()):.3f} | "
            f"{r.union_fraction:.3f} | {r.stored_parameters / single_params:.3f} |"
        )
    detail = [
        "| method | domain | accuracy | MACs | parameters | cost fraction |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for n in names:
            detail.append(
                f"| {r.method} | {n} | {100 * r.accuracy[n]:.1f} | {r.macs[n]:,} "
                f"| {r.parameters[n]:,} | {r.fraction[n]:.3f} |"
            )
    prov = provenance()
    return "\n".join(
        [
            "# Results: accuracy kept, parameters and MACs cut, per budget",
            "",
            f"Produced by `python -m training report` at commit `{prov['commit']}` on "
            f"{prov['machine']} (torch {prov['torch']}), {prov['created_at']}, in "
            f"{(time.time() - started) / 60:.1f} minutes.",
            f"Domains: {', '.join(names)}; `{config.arch}`, width {config.width}, input "
            f"{config.crop}px, budget "
            f"unit `{config.budget_unit}`, {_stage1(config)}, "
            f"{config.epochs} stage-2 epochs (the independent models fine-tune for as long), "
            f"{config.recovery_epochs} recovery epochs, distillation weight "
            f"{config.distill_weight}, {config.precision}. "
            "Accuracy in %, on each domain's test split.",
            "",
            "S is the Visual Decathlon score, S = Σ 1000·(max(0, Emax − E)/Emax)², Emax = 2 × the "
            "error of (1); (1) scores 250 per domain by construction ((1/2)² × 1000). "
            "'max domain cost' is the "
            "largest realised per-domain cost fraction (the budget guarantee keeps it ≤ β); "
            "'stored model cost' is the fraction of the single-domain cost that the pruned model "
            "still holds (what survives pruning: the union of the domains' filters).",
            *(
                [
                    "'S (Decathlon baseline)' is the same score against the Visual Decathlon's "
                    "published fine-tuning baseline (Rebuffi et al. 2017; 250 a domain, 2500 "
                    "over the ten), shown because every domain is a Decathlon dataset: "
                    "comparable with the leaderboard (parallel residual adapters: 3412)."
                ]
                if published
                else []
            ),
            "",
            *lines,
            "",
            "## Per domain",
            "",
            *detail,
            "",
            "![accuracy vs budget](accuracy_vs_budget.png)",
            "",
        ]
    )


def plot(rows: list[Row], path: Path) -> None:
    """Mean and per-domain accuracy of BAP against the budget, with baselines (1) and (2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bap = sorted((r for r in rows if r.method.startswith("(4)")), key=lambda r: r.budget)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = [r.budget for r in bap]
    for name in rows[0].accuracy:
        ax.plot(budgets, [100 * r.accuracy[name] for r in bap], marker="o", alpha=0.5, label=name)
    ax.plot(
        budgets,
        [100 * r.mean_accuracy for r in bap],
        marker="o",
        color="black",
        lw=2.5,
        label="BAP mean",
    )
    ax.axhline(100 * rows[0].mean_accuracy, ls="--", color="tab:red", label="(1) independent, mean")
    for frozen in (r for r in rows if r.method.startswith("(2)")):
        ax.axhline(
            100 * frozen.mean_accuracy, ls=":", color="tab:gray", label="(2) BN + heads, mean"
        )
    ax.set_xlabel("budget β (fraction of single-domain MACs)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("BAP: accuracy against budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
