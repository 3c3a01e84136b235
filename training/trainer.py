"""THE method, top to bottom: pretrain a shared backbone, then learn per-domain switches under
a budget while pushing every domain onto the same filters.

Stage 1 (pretrain): every weight trains, one batch per domain per step (round-robin), each
domain with its own BatchNorm and head. Stage 2 (BAP): conv weights freeze; each domain's
switch scores, BatchNorms and head learn with
    L = sum_d CE_d + budget_weight * sum_d max(0, c_d - budget) + w(t) * sharing
where c_d is the domain's cost fraction and w(t) ramps sharing_weight up over the warm-up
(or, under dual control, with Lagrange multipliers in place of the fixed weights). With
`distill_weight` > 0, CE_d mixes in distillation from the stage-1 network (every filter on),
which is kept beside the checkpoint as `pretrained.safetensors`.
Checkpoints every `checkpoint_every` steps make a killed run resume where it stopped.

Data parallel (torchrun): every rank draws the same global batch per domain and trains on its
rows; DDP averages the gradients of what the phase trains (stage 2: the switch scores too), so
every rank holds the same scores, masks, losses and dual multipliers. Per-domain BN statistics
are per rank while training and averaged at each checkpoint, or global with `sync_bn`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from model_store import (
    ArtifactError,
    DomainBatchNorm,
    ModelSpec,
    MultiDomainResNet,
    build_model,
    filter_costs,
)

from . import distributed
from .checkpoint import (
    load_checkpoint,
    load_optimizer_tensors,
    load_scaler_tensors,
    optimizer_tensors,
    save_atomically,
    save_checkpoint,
    scaler_tensors,
)
from .config import TrainConfig
from .data import DomainData, RoundRobin, TrainStream
from .losses import CostTerms, DualMultipliers, budget_loss, sharing_loss, union_masks
from .pretrained import load_pretrained
from .recovery import fill_to_budget, recalibrate_bn
from .sources import load_domain
from .switches import Switches

log = logging.getLogger(__name__)
PHASES = ("pretrain", "bap", "recover", "done")
PRETRAINED = "pretrained.safetensors"  # the stage-1 network, kept beside the run's checkpoint
# Stage 2 shorter than this did not reach the budget by training, so such a run is refused before
# it starts. Measured on the embedded preset with 700 training images a domain, beta 0.5: after 9
# steps the domains used 0.53-0.63 of the MACs and the export's cut took digits from 0.70 to 0.22;
# after 15 textures still used 0.52 and its cut took it from 0.95 to 0.83 (both refused after a
# 4-8 minute run); after 26 and 50 steps every domain was under 0.46 and nothing was cut.
REACH_STEPS = 25


@dataclass
class TrainResult:
    """The trained full network (stored masks = final switches) and the scores behind them."""

    model: MultiDomainResNet
    scores: list[Tensor]
    data: list[DomainData]
    pretrained: dict[str, str] | None = None  # the file it started from (training/pretrained.py)


def load_backbone(model: MultiDomainResNet, path: Path) -> None:
    """Start from stored weights: a safetensors file or an unpruned version folder.

    The shared convs are required. Per-domain tensors (BN, heads) load too when their names and
    shapes match (same domains in the same order), so a pretrained multi-domain network can be
    the starting point of several BAP runs. A single-domain network's BN (a backbone pretrained
    on one source domain, e.g. ImageNet for the Decathlon) starts every domain's BN, as
    `pretrained` files do.
    """
    path = Path(path)
    file = path / "weights.safetensors" if path.is_dir() else path
    try:
        tensors = load_file(str(file))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{file}: cannot read backbone weights ({exc})") from exc
    own = model.state_dict()
    convs = (f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    for key in convs:
        if key not in tensors or tensors[key].shape != own[key].shape:
            raise ArtifactError(
                f"{file}: no {key} of shape {tuple(own[key].shape)}; a backbone must be an "
                f"unpruned network of width {model.spec.width}"
            )
    matching = {
        k: v
        for k, v in tensors.items()
        if k in own and v.shape == own[k].shape and k.split(".")[-1] != "masks"
    }
    stacked = (
        f"{n}.{t}"
        for n, m in model.named_modules()
        if isinstance(m, DomainBatchNorm)
        for t in ("weight", "bias", "running_mean", "running_var")
    )
    for key in stacked:
        found = tensors.get(key)  # one source domain's row: it starts every domain's
        if key not in matching and found is not None and found.shape == own[key][:1].shape:
            matching[key] = found.expand_as(own[key]).clone()
    model.load_state_dict(matching, strict=False)
    log.info("backbone=%s loaded=%d of %d tensors", file, len(matching), len(own))


class Trainer:
    """Holds one run's state; `run()` executes the remaining phases and returns the result."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        data: list[DomainData],
        progress: bool,
        ranks: distributed.Ranks | None = None,
    ):
        self.config, self.run_dir, self.data = config, run_dir, data
        self.ranks = ranks or distributed.Ranks()
        self.progress = progress and self.ranks.main
        if min(config.batch_size, *(len(d.train) for d in data)) < self.ranks.world:
            raise ValueError(
                f"{self.ranks.world} ranks each take rows of every batch: give batch_size (and "
                f"every domain's training images) >= {self.ranks.world}, or use fewer ranks"
            )
        torch.manual_seed(config.seed)
        spec = ModelSpec(
            domains=tuple(d.domain_spec(config.normalization, config.workers) for d in data),
            width=config.width,
            input_size=config.crop,
            arch=config.arch,
        )
        self.model = build_model(spec)
        self.switches = Switches(
            list(spec.gated_filters()), len(data), config.score_init, config.ste_clip
        )
        self.sampler = RoundRobin(data, config.batch_size, config.seed)
        self.augment = torch.Generator().manual_seed(config.seed + 1)
        # Batches are planned from the sampler and `augment` as they are handed out and built
        # ahead by loader workers; checkpoints take the stream's state, not the sampler's.
        self.stream = TrainStream(
            data,
            self.sampler,
            self.augment,
            config.augmentation,
            self.ranks.rows,
            config.workers,
            pin_memory=self.ranks.device.type == "cuda",
        )
        device = self.ranks.device
        costs = [c.to(device) for c in filter_costs(spec, config.budget_unit)]
        self.terms = CostTerms(spec, config.budget_unit, costs)
        # Steps of each phase, known up front: one progress bar (and its ETA) spans them all;
        # the BN re-estimation's batches count as steps of a last phase.
        per_epoch = self.sampler.steps_per_epoch
        self.plan = {
            "pretrain": math.ceil(config.stage1_epochs * per_epoch),
            "bap": stage2_steps(config, per_epoch),
            "recover": math.ceil(config.recovery_epochs * per_epoch),
            "recalibrate": config.bn_recalibration_batches * len(data),
        }
        self.duals = DualMultipliers(
            len(data), config.budget, config.dual_lr or 0.0, self.plan["bap"]
        )
        self.scaler = distributed.grad_scaler(device, config.precision)
        self.phase, self.step, self.optim_state = "pretrain", 0, {}
        if config.backbone:  # stage 1 then fine-tunes it, for stage1_epochs (0 skips it)
            load_backbone(self.model, Path(config.backbone))
        self.pretrained = (
            load_pretrained(self.model, Path(config.pretrained)) if config.pretrained else None
        )
        # channels-last convolutions run ~1.3x faster on CPU here (oneDNN), and on GPUs too.
        self.model.to(device, memory_format=torch.channels_last)
        self.switches.to(device)
        if config.sync_bn:
            self.ranks.sync_batch_norm(self.model)
        self.net: torch.nn.Module = self.model  # what a step calls: the model, or its DDP
        self.teacher: MultiDomainResNet | None = None  # the stage-1 network, when distilling

    # ---- checkpoints -------------------------------------------------------------------
    def save(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Every rank joins (BN statistics are averaged, replicas checked); rank 0 writes."""
        self.ranks.average_buffers(self.model)
        self.ranks.check_in_sync([*self.model.parameters(), *self.switches.parameters()])
        if not self.ranks.main:
            return
        planning = self.stream.state()  # of the next batch to train on, not the next decoded
        groups = {
            "model": self.model.state_dict(),
            "switches": self.switches.state_dict(),
            "sampler": planning["sampler"],
            "rng": {"augment": planning["augment"]["rng"], "torch": torch.get_rng_state()},
            "duals": {"values": self.duals.values},
            "optim": optimizer_tensors(optimizer) if optimizer is not None else {},
            "scaler": scaler_tensors(self.scaler),
        }
        save_checkpoint(self.run_dir, groups, {"phase": self.phase, "step": self.step})

    def restore(self) -> bool:
        found = load_checkpoint(self.run_dir)
        if found is None:
            return False
        groups, meta = found
        self.model.load_state_dict(groups["model"])
        self.switches.load_state_dict(groups["switches"])
        self.stream.load_state(
            {"sampler": groups["sampler"], "augment": {"rng": groups["rng"]["augment"]}}
        )
        torch.set_rng_state(groups["rng"]["torch"])
        self.duals.values = groups["duals"]["values"]
        load_scaler_tensors(self.scaler, groups.get("scaler", {}))
        self.phase, self.step, self.optim_state = (
            meta["phase"],
            meta["step"],
            groups.get("optim", {}),
        )
        log.info("resumed run_dir=%s phase=%s step=%d", self.run_dir, self.phase, self.step)
        return True

    def keep_pretrained(self) -> None:
        """Write the stage-1 network (every filter on) beside the checkpoint: the distillation
        teacher, and a backbone later runs can start from (`backbone=`)."""
        if self.ranks.main:
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            save_atomically(self.run_dir / PRETRAINED, tensors)
        self.ranks.barrier()

    def load_pretrained(self) -> MultiDomainResNet:
        path = self.run_dir / PRETRAINED
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the stage-1 network to distil from is missing")
        teacher = build_model(self.model.spec)
        teacher.load_state_dict(load_file(str(path)))
        teacher.requires_grad_(False)
        return teacher.to(self.ranks.device, memory_format=torch.channels_last).eval()

    # ---- the two stages ----------------------------------------------------------------
    def batch(self, d: int) -> tuple[Tensor, Tensor, float]:
        """This rank's rows of domain d's next global batch, augmented, on the device, and the
        weight on their mean loss that makes DDP's average over ranks the global batch mean."""
        x, y, size = self.stream.next(d, self.model.spec.domains[d].preprocess)
        x = self.ranks.to_device(x).contiguous(memory_format=torch.channels_last)
        return x, self.ranks.to_device(y), self.ranks.shard_weight(size)

    def task_loss(self, d: int, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy on the labels, mixed with distillation from the teacher when there is one:
        (1 - a) CE + a T^2 KL(teacher || student) at temperature T (Hinton et al., 2015)."""
        ce = F.cross_entropy(logits, y)
        if self.teacher is None:
            return ce
        a, t = self.config.distill_weight, self.config.distill_temperature
        assert t is not None  # TrainConfig fills it whenever distill_weight > 0
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x, d).float() / t, dim=1)
        student = F.log_softmax(logits.float() / t, dim=1)
        kd = F.kl_div(student, target, log_target=True, reduction="batchmean") * t * t
        return (1 - a) * ce + a * kd

    def stored_mask_step(self, step: int, total: int) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy through the stored masks: all on in stage 1, the final ones in recovery."""
        loss = torch.zeros((), device=self.ranks.device)
        for d in range(len(self.data)):
            x, y, weight = self.batch(d)
            loss = loss + weight * self.task_loss(d, self.net(x, d), x, y)
        return loss, {"task": loss.item()}

    def bap_step(self, step: int, total: int) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        all_masks = self.switches.all_masks()
        cost_masks = self.switches.all_masks(active_only=cfg.penalise_active_only)
        ce, fractions = torch.zeros((), device=self.ranks.device), []
        for d in range(len(self.data)):
            x, y, weight = self.batch(d)
            logits = self.net(x, d, [m[d] for m in all_masks])
            ce = ce + weight * self.task_loss(d, logits, x, y)
            fractions.append(self.terms.domain(d, [m[d] for m in cost_masks]))
        union = self.terms.shared(union_masks(cost_masks))
        if cfg.budget_control == "dual":
            dual_union = union if cfg.sharing == "union" else None
            constraints = self.duals.penalty(fractions, dual_union)
        else:
            constraints = cfg.budget_weight * budget_loss(fractions, cfg.budget)
        if cfg.budget_control == "hinge" or cfg.sharing not in ("union", "none"):
            warm = min(1.0, step / max(1.0, cfg.sharing_warmup * total))
            share = sharing_loss(cfg.sharing, self.terms, cost_masks, cfg.budget)
            constraints = constraints + warm * cfg.sharing_weight * share
        costs = [f.item() for f in fractions]  # the same on every rank: the same scores
        if cfg.budget_control == "dual":
            self.duals.update(costs, union.item() if cfg.sharing == "union" else None)
        return ce + constraints, {"task": ce.item(), "cost": max(costs), "union": union.item()}

    def sgd(self, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.SGD:
        """SGD with the run's momentum and weight decay (stage 1 and recovery)."""
        cfg = self.config
        return torch.optim.SGD(params, lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def freeze_masks(self) -> None:
        """The stored masks := the switches' final hard masks (idempotent: scores are fixed)."""
        with torch.no_grad():
            for stored, mask in zip(
                self.model.gated_masks(), self.switches.hard_masks(), strict=True
            ):
                stored.copy_(mask)

    def run_phase(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        step_fn: Callable[[int, int], tuple[Tensor, dict[str, float]]],
        bar: tqdm,
    ) -> None:
        total = self.plan[name]
        if self.optim_state:
            load_optimizer_tensors(optimizer, self.optim_state)
            self.optim_state = {}
        base = [g["lr"] for g in optimizer.param_groups]
        self.describe(bar, name)
        while self.step < total:
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * self.step / total))  # cosine decay
            optimizer.zero_grad(set_to_none=True)
            with distributed.autocast(self.ranks.device, self.config.precision):
                loss, stats = step_fn(self.step, total)
            self.scaler.scale(loss).backward()  # DDP averages the gradients over ranks here
            self.scaler.step(optimizer)
            self.scaler.update()
            self.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()}, refresh=False)
            if self.step % self.config.checkpoint_every == 0 and self.step < total:
                self.save(optimizer)
        log.info(
            "phase=%s done steps=%d %s",
            name,
            total,
            " ".join(f"{k}={v:.4f}" for k, v in stats.items()) if total else "",
        )
        self.phase, self.step = PHASES[PHASES.index(name) + 1], 0
        self.save(None)

    def schedule_problem(self) -> str | None:
        """Why stage 2 cannot bring the switches to the budget, known before any step runs."""
        cfg, steps = self.config, self.plan["bap"]
        if cfg.budget >= 1 or steps >= REACH_STEPS:
            return None
        sizes = ", ".join(f"{d.name} {len(d.train)}" for d in self.data)
        return (
            f"stage 2 would run {steps} steps (epochs {cfg.epochs:g} x "
            f"{self.sampler.steps_per_epoch} an epoch at batch_size {cfg.batch_size}; training "
            f"images: {sizes}; min_bap_steps {cfg.min_bap_steps}), too few to reach the budget "
            f"{cfg.budget} by training (runs under {REACH_STEPS} steps did not), so the export "
            f"would cut filters blindly and the run be refused after training. Raise "
            f"min_bap_steps or epochs to give stage 2 at least {REACH_STEPS} steps, or pass "
            f"--force to train and publish anyway"
        )

    def describe(self, bar: tqdm, name: str) -> None:
        """`2/4 bap`: which phase of how many the run's one bar is in."""
        bar.set_description(f"{list(self.plan).index(name) + 1}/{len(self.plan)} {name}")

    def run(self) -> TrainResult:
        cfg = self.config
        done = sum(
            n
            for p, n in self.plan.items()
            if p in PHASES and PHASES.index(p) < PHASES.index(self.phase)
        )
        bar = tqdm(
            total=sum(self.plan.values()),
            initial=done + self.step,
            disable=not self.progress,
            unit="step",
        )
        self.model.train()
        if self.phase == "pretrain":
            self.net = self.ranks.replicate(self.model)
            opt = self.sgd(self.model.parameters(), cfg.pretrain_lr)
            self.run_phase("pretrain", opt, self.stored_mask_step, bar)
        for p in self.model.shared_parameters():
            p.requires_grad_(False)
        if self.phase == "bap" and self.step == 0:
            self.keep_pretrained()  # the model is still exactly stage 1's here, also on resume
        if cfg.distill_weight > 0 and self.phase in ("bap", "recover"):
            self.teacher = self.load_pretrained()
        if self.phase == "bap" and self.step == 0 and cfg.score_init_from_bn:
            self.switches.spread_by_importance(
                [bn.weight.detach() for bn in self.model.gated_norms()]
            )
        if self.phase == "bap":
            self.net = self.ranks.replicate(self.model, self.switches)
            opt = torch.optim.SGD(
                [
                    {
                        "params": self.model.domain_parameters(),
                        "lr": cfg.lr,
                        "weight_decay": cfg.weight_decay,
                    },
                    {
                        "params": list(self.switches.parameters()),
                        "lr": cfg.score_lr,
                        "momentum": cfg.score_momentum,
                        "weight_decay": 0.0,
                    },
                ],
                lr=cfg.lr,
                momentum=cfg.momentum,
            )
            self.run_phase("bap", opt, self.bap_step, bar)
        self.freeze_masks()  # stage 2 is over (phase recover or done): the masks are final
        if cfg.fill_to_budget:  # deterministic, so a resumed run gets the same masks again
            fill_to_budget(self.model, list(self.switches.scores), cfg.budget, cfg.budget_unit)
        if self.phase == "recover":
            self.net = self.ranks.replicate(self.model)
            opt = self.sgd(self.model.domain_parameters(), cfg.recovery_lr)
            self.run_phase("recover", opt, self.stored_mask_step, bar)
        self.stream.close()  # training batches are over: stop the loader workers
        # Every rank runs the same seeded batches, so the statistics agree without averaging.
        self.describe(bar, "recalibrate")
        recalibrate_bn(
            self.model,
            self.data,
            cfg.bn_recalibration_batches,
            cfg.batch_size,
            cfg.seed + 2,
            progress=bar,
            workers=cfg.workers,
        )
        bar.close()
        scores = [s.detach().cpu().clone() for s in self.switches.scores]
        model = self.model.to("cpu", memory_format=torch.contiguous_format).eval()
        return TrainResult(model, scores, self.data, self.pretrained)


def stage2_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """Stage 2's length: `epochs` of steps, at least `min_bap_steps` (none when epochs is 0)."""
    steps = math.ceil(config.epochs * steps_per_epoch)
    if 0 < steps < config.min_bap_steps:
        log.info(
            "stage 2: epochs %g give %d steps, lengthened to min_bap_steps %d so the switches "
            "can reach the budget",
            config.epochs,
            steps,
            config.min_bap_steps,
        )
        return config.min_bap_steps
    return steps


def train(
    config: TrainConfig | None,
    run_dir: Path,
    resume: bool = False,
    data: list[DomainData] | None = None,
    progress: bool = True,
    ranks: distributed.Ranks | None = None,
    check_schedule: bool = False,
) -> TrainResult:
    """Run (or resume) one BAP training run in `run_dir`, as one of `ranks` processes.

    Resuming keeps the stored config; `config`, if given, may change only the RESUME_SAFE
    fields (anything else is refused). `check_schedule`: refuse, before the first step, a
    stage 2 too short to reach the budget (a run that is to be published)."""
    ranks = ranks or distributed.Ranks()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = run_dir / "config.json"
    resume = resume or distributed.restarted_launch(run_dir)
    if resume:
        if not stored.is_file():
            raise FileNotFoundError(f"{run_dir}: nothing to resume (no config.json); drop --resume")
        kept = TrainConfig.load_record(stored)
        config = kept if config is None else kept.resumed_with(config)
    elif config is None:
        raise ValueError("a new run needs a config")
    elif load_checkpoint(run_dir) is not None:
        raise FileExistsError(
            f"{run_dir} holds a checkpoint: pass --resume, or pick another --run-dir"
        )
    ranks.barrier()  # every rank has read the folder before rank 0 writes to it
    if ranks.main:
        config.save(stored)
        distributed.mark_launch(run_dir)
    ranks.barrier()
    if config.threads:
        torch.set_num_threads(config.threads)
    if data is None:
        data = [load_domain(entry, config.resize, config.crop) for entry in config.domains]
    log.info(
        "loaded %d domains, %s training and %s test images: %s",
        len(data),
        f"{sum(len(d.train) for d in data):,}",
        f"{sum(len(d.test) for d in data):,}",
        ", ".join(f"{d.name} {len(d.labels)} classes {len(d.train)}/{len(d.test)}" for d in data),
    )
    trainer = Trainer(config, run_dir, data, progress, ranks)
    if check_schedule and (problem := trainer.schedule_problem()):
        raise ValueError(problem)
    if resume:
        trainer.restore()
    return trainer.run()
