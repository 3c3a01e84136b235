"""TrainConfig: every training default lives here, validated, and round-trips through JSON.

The resolved config is written into the run folder and into the published manifest, and a
resumed run rebuilds itself from the stored copy, so a run is always reproducible from its files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from model_store import ARCH_BUILDERS, UNITS, domain_name_problems

from .data import AUGMENTS, NORMALIZATIONS, recipe

SHARING_FORMS = ("union", "intersection", "jaccard", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
# What a resumed run may change: neither touches what it has learned or will learn.
RESUME_SAFE = ("name", "threads", "workers")  # workers: batches are planned, not decoded, alike
STAGE1_EPOCHS = 2.0  # pretrain_epochs when none is given and the backbone is not pretrained
DISTILL_TEMPERATURE = 2.0  # T when distill_weight > 0 and none is given
# Defaults of the knobs only one budget-control mode or sharing form reads.
MODE_DEFAULTS = {"dual_lr": 0.5, "budget_weight": 5.0, "sharing_weight": 5.0, "sharing_warmup": 0.3}


def _synthetic_domains() -> list[dict[str, Any]]:
    return [
        {"source": "synthetic", "name": "shapes", "classes": 4, "seed": 1},
        {"source": "synthetic", "name": "colours", "classes": 5, "seed": 2},
        {"source": "synthetic", "name": "noise", "classes": 3, "seed": 3},
    ]


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read training config ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config is a JSON object")
    return data


def mode_knobs(budget_control: str, sharing: str) -> dict[str, str | None]:
    """Each mode-specific knob -> None where this mode reads it, else why it does not."""
    dual, mode = budget_control == "dual", f"budget_control={budget_control!r}"
    if sharing == "none":
        sharing_unused: str | None = "sharing='none' has no sharing loss"
    elif dual and sharing == "union":
        sharing_unused = f"under {mode} the union constraint has its own multiplier"
    else:
        sharing_unused = None
    return {
        "dual_lr": None if dual else f"{mode} uses fixed weights, no multipliers",
        "budget_weight": f"{mode} weighs the budget by multipliers" if dual else None,
        "sharing_weight": sharing_unused,
        "sharing_warmup": sharing_unused,
    }


@dataclass
class TrainConfig:
    """One BAP run: data, backbone, pretraining, switch training, export."""

    name: str = "bap"
    domains: list[dict[str, Any]] = field(default_factory=_synthetic_domains)
    # backbone and input
    arch: str = "resnet26_decathlon"  # resnet26_decathlon, resnet18, resnet34 or resnet50
    width: float = 0.5
    resize: int = 36
    crop: int = 32
    backbone: str | None = None  # start from these weights (safetensors or version folder)
    # start from a torchvision or timm ResNet state dict (.pth or .safetensors; arch resnet18,
    # resnet34 or resnet50 at width 1): every domain's BN from the file's, its fc ignored
    pretrained: str | None = None
    # data: the training transform ("crop_flip": a random crop of the resize square;
    # "random_resized_crop": torchvision's RRC of the decoded image) and the normalisation
    # ("data": each domain's training statistics; "imagenet": ImageNet's mean/std). None picks
    # by the weights' origin: RRC and ImageNet's with `pretrained`, else crop_flip and data.
    augment: str | None = None
    normalize: str | None = None
    # processes decoding image files per batch (0: in this process; None: min(4, cores))
    workers: int | None = None
    # stage 1: pretrain every weight jointly (shared convs, per-domain BN and heads). None: none
    # with `pretrained` (its convs are the backbone, frozen from the start), else STAGE1_EPOCHS
    pretrain_epochs: float | None = None
    pretrain_lr: float = 0.05
    # stage 2: convs frozen; switches, BN and heads learn under the budget and sharing losses
    budget: float = 0.5
    budget_unit: str = "macs"
    epochs: float = 6.0
    # Stage 2 runs at least this many steps whatever `epochs` gives (0: exactly `epochs`): on
    # a few hundred images 1.5 epochs are 9 steps, too few for the switches to reach the budget
    # (see trainer.REACH_STEPS), and the export's blind cut then ruins the run after training.
    # 50 is twice the shortest stage 2 measured to reach it; on that data 50 steps published
    # a mean accuracy of 0.735, 26 steps 0.714.
    min_bap_steps: int = 50
    lr: float = 0.01  # per-domain BN affines and heads
    score_lr: float = 0.003
    score_momentum: float = 0.9  # lower damps the hinge's overshoot below the budget
    score_init: float = 0.01  # every switch starts on, just above the threshold
    score_init_from_bn: bool = True  # spread starts by each filter's BN scale (see Switches)
    penalise_active_only: bool = True  # cost gradients reach only switches that are on
    ste_clip: float = 1.0  # straight-through gradient zeroed where |score| > clip (0: never)
    budget_control: str = (
        "dual"  # "dual": Lagrange multipliers by dual ascent; "hinge": fixed weights
    )
    sharing: str = "union"
    # Mode-specific knobs: None means "this mode's default" where the mode reads the knob, and
    # giving one that the chosen mode never reads is an error (see MODE_DEFAULTS).
    dual_lr: float | None = None  # dual ascent step on the multipliers (dual control)
    budget_weight: float | None = None  # weight of the budget hinge (hinge control)
    sharing_weight: float | None = None  # weight of the sharing loss, where it is a loss
    sharing_warmup: float | None = None  # fraction of stage-2 steps sharing_weight ramps over
    # recovery: masks final; BN affines and heads fine-tune, then BN statistics are re-estimated
    # distillation in stage 2 and recovery: each domain also matches the unmasked network's
    # outputs (same convs, stage-1 BN and heads); 0 trains on the labels alone
    distill_weight: float = 0.0  # alpha in (1 - alpha) * CE + alpha * T^2 * KL(teacher || student)
    distill_temperature: float | None = None  # T; read only when distill_weight > 0 (default 2)
    # fill_to_budget: each domain takes back, within the union, the filters dual ascent dropped
    # below its budget (highest score first) before recovery; see training/recovery.py
    fill_to_budget: bool = True
    recovery_epochs: float = 0.5
    recovery_lr: float = 0.01
    bn_recalibration_batches: int = 50  # per domain; 0 keeps the statistics training left
    # optimisation
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    sync_bn: bool = False  # several ranks: BN statistics of the global batch, not each shard
    precision: str = "fp32"  # "bf16" / "fp16": autocast forward and loss (fp16 with loss scaling)
    eval_batch_size: int = 256
    checkpoint_every: int = 200  # steps between resumable checkpoints

    def __post_init__(self) -> None:
        problems = []
        if self.arch not in ARCH_BUILDERS:
            problems.append(f"arch must be one of {sorted(ARCH_BUILDERS)}, got {self.arch!r}")
        if self.backbone and self.pretrained:
            problems.append("give backbone (our own weights) or pretrained (a ResNet's), not both")
        if not 0 < self.budget <= 1:
            problems.append(f"budget must be in (0, 1], got {self.budget}")
        if self.budget_unit not in UNITS:
            problems.append(f"budget_unit must be one of {UNITS}, got {self.budget_unit!r}")
        if self.budget_control not in ("dual", "hinge"):
            problems.append(
                f"budget_control must be 'dual' or 'hinge', got {self.budget_control!r}"
            )
        if self.sharing not in SHARING_FORMS:
            problems.append(f"sharing must be one of {SHARING_FORMS}, got {self.sharing!r}")
        if not 0 < self.crop <= self.resize or self.crop % 8:
            problems.append(
                f"need crop <= resize and crop a multiple of 8, got {self.crop}, {self.resize}"
            )
        if not self.domains:
            problems.append("domains: give at least one domain entry")
        if any("source" not in d or "name" not in d for d in self.domains):
            problems.append("every domain entry needs 'source' and 'name'")
        else:
            problems += domain_name_problems([d["name"] for d in self.domains])
        if self.augment is not None and self.augment not in AUGMENTS:
            problems.append(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            problems.append(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.workers is not None and self.workers < 0:
            problems.append(f"workers must be >= 0 (0: decode in the trainer), got {self.workers}")
        if self.stage1_epochs < 0 or self.epochs < 0 or self.batch_size < 1:
            problems.append("epochs must be >= 0 and batch_size >= 1")
        if self.recovery_epochs < 0 or self.bn_recalibration_batches < 0:
            problems.append("recovery_epochs and bn_recalibration_batches must be >= 0")
        if self.min_bap_steps < 0:
            problems.append(f"min_bap_steps must be >= 0, got {self.min_bap_steps}")
        if not 0 <= self.score_momentum < 1:
            problems.append(f"score_momentum must be in [0, 1), got {self.score_momentum}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        problems += self._resolve_mode_knobs()
        problems += self._resolve_distillation()
        if self.sharing_warmup is not None and not 0 <= self.sharing_warmup <= 1:
            problems.append(f"sharing_warmup must be in [0, 1], got {self.sharing_warmup}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def stage1_epochs(self) -> float:
        """Stage 1's length: pretrain_epochs, or by default none from pretrained weights."""
        if self.pretrain_epochs is not None:
            return self.pretrain_epochs
        return 0.0 if self.pretrained else STAGE1_EPOCHS

    @property
    def augmentation(self) -> str:
        """The training transform this run uses (see `training.data.recipe`)."""
        return recipe(self.augment, self.normalize, bool(self.pretrained))[0]

    @property
    def normalization(self) -> str:
        """The normalisation this run's domains are served with (see `training.data.recipe`)."""
        return recipe(self.augment, self.normalize, bool(self.pretrained))[1]

    def _resolve_mode_knobs(self) -> list[str]:
        """Fill the knobs this mode reads with their defaults; refuse the ones it ignores."""
        problems = []
        for knob, unused_because in mode_knobs(self.budget_control, self.sharing).items():
            value = getattr(self, knob)
            if unused_because is None and value is None:
                setattr(self, knob, MODE_DEFAULTS[knob])
            elif unused_because is not None and value is not None:
                problems.append(f"{knob} has no effect in this run ({unused_because}); remove it")
        return problems

    def _resolve_distillation(self) -> list[str]:
        if not 0 <= self.distill_weight <= 1:
            return [f"distill_weight must be in [0, 1], got {self.distill_weight}"]
        if self.distill_weight == 0:
            if self.distill_temperature is not None:
                return ["distill_temperature has no effect with distill_weight 0; remove it"]
            return []
        if self.distill_temperature is None:
            self.distill_temperature = DISTILL_TEMPERATURE
        if self.distill_temperature <= 0:
            return [f"distill_temperature must be > 0, got {self.distill_temperature}"]
        return []

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> TrainConfig:
        """A config stored before the mode-knob rule (manifests, run folders): the knobs its mode
        never read are dropped rather than refused, since they did nothing when it ran; one from
        before min_bap_steps ran exactly its epochs (0), and one from before augment and
        normalize cropped, flipped and used its data's statistics: each resumes as it ran."""
        unused = mode_knobs(data.get("budget_control", "dual"), data.get("sharing", "union"))
        kept = {k: v for k, v in data.items() if unused.get(k) is None}
        # Before the recipe fields, every run cropped, flipped and used its data's statistics.
        ran = {"min_bap_steps": 0, "augment": "crop_flip", "normalize": "data"}
        return cls.from_dict({**ran, **kept})

    def resumed_with(self, requested: TrainConfig) -> TrainConfig:
        """This stored run's config with the RESUME_SAFE fields of `requested`; any other
        difference is refused: a run resumed under other settings is neither run."""
        mine, theirs = self.to_dict(), requested.to_dict()
        changed = sorted(k for k in mine if k not in RESUME_SAFE and mine[k] != theirs[k])
        if changed:
            shown = ", ".join(f"{k}: {mine[k]!r} -> {theirs[k]!r}" for k in changed)
            raise ValueError(
                f"a resumed run keeps its settings, and these differ from the stored run's "
                f"({shown}); drop them to resume, or start a new --run-dir with them. "
                f"Only {', '.join(RESUME_SAFE)} may change on --resume"
            )
        return self.override(**{k: theirs[k] for k in RESUME_SAFE})

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(_read_object(path))

    @classmethod
    def load_record(cls, path: Path) -> TrainConfig:
        """`load` for a config this code wrote earlier (see from_record)."""
        return cls.from_record(_read_object(path))

    def override(self, **changes: Any) -> TrainConfig:
        """A copy with the given (non-None) fields replaced, validated again."""
        given = {k: v for k, v in changes.items() if v is not None}
        data = {**self.to_dict(), **given}
        # A knob this config filled with its mode's default is dropped if the new mode ignores it.
        for knob, unused in mode_knobs(data["budget_control"], data["sharing"]).items():
            if unused is not None and knob not in given:
                data[knob] = None
        if data["distill_weight"] == 0 and "distill_temperature" not in given:
            data["distill_temperature"] = None
        return TrainConfig.from_dict(data)
