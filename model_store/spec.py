"""The shape of a stored model, as plain data.

A network is rebuilt from a ModelSpec alone (then its weights load with strict checks), so the
full masked network, the pruned network and a single domain's view are one class with different
specs. Everything here round-trips through JSON for the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

ARCHITECTURES = ("resnet26_decathlon",)
# Visual Decathlon ResNet-26: a 32-wide stem, then 3 stages of 4 basic blocks.
STEM_WIDTH = 32
STAGE_WIDTHS = (64, 128, 256)
BLOCKS_PER_STAGE = 4


class SpecError(ValueError):
    """A spec that cannot describe a network; the message says which field is wrong."""


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become the network's input for one domain (eval transform)."""

    resize: int  # shorter side, in pixels, before the centre crop
    crop: int  # square side fed to the network
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise SpecError(f"preprocess needs 0 < crop <= resize, got {self.crop}, {self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SpecError("preprocess mean and std need 3 values each, std > 0")


def domain_name_problems(names: Sequence[Any]) -> list[str]:
    """What is wrong with these domain names (each is a URL key; together they must be unique).
    One rule for the spec and for a training config checked before any image is decoded."""
    problems = [
        f"domain name {n!r} must be letters, digits, '-' or '_'"
        for n in names
        if not isinstance(n, str) or not n or not n.replace("_", "").replace("-", "").isalnum()
    ]
    repeated = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if repeated:
        problems.append(f"domain names must be unique; repeated: {repeated}")
    return problems


@dataclass(frozen=True)
class DomainSpec:
    """One domain: its name (the URL key), its class labels in index order, its transform."""

    name: str
    labels: tuple[str, ...]
    preprocess: Preprocess

    def __post_init__(self) -> None:
        for problem in domain_name_problems([self.name]):
            raise SpecError(problem)
        if len(self.labels) < 2:
            raise SpecError(f"domain {self.name!r} needs at least 2 labels")


@dataclass(frozen=True)
class BlockSpec:
    """One basic block; only its first conv is gated, so only mid_channels changes on pruning."""

    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int


@dataclass(frozen=True)
class ModelSpec:
    """Architecture + width + which filters of each gated conv this network holds.

    `mid_channels` is None for the full backbone; a pruned network lists how many filters each
    block's gated conv keeps. The full backbone's shape (the cost baseline) is always derivable.
    """

    domains: tuple[DomainSpec, ...]
    width: float = 1.0
    input_size: int = 64
    arch: str = "resnet26_decathlon"
    mid_channels: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise SpecError(f"unknown arch {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if not 0 < self.width <= 4:
            raise SpecError(f"width multiplier must be in (0, 4], got {self.width}")
        if self.input_size < 8 or self.input_size % 8:
            # Three stride-2 stages: sizes divisible by 8 keep conv and pooled shortcut aligned.
            raise SpecError(f"input_size must be a multiple of 8, got {self.input_size}")
        if not self.domains:
            raise SpecError("a model needs at least one domain")
        if any(d.preprocess.crop != self.input_size for d in self.domains):
            raise SpecError(
                f"every domain's preprocess.crop must equal input_size {self.input_size}"
            )
        for problem in domain_name_problems([d.name for d in self.domains]):
            raise SpecError(problem)
        n_blocks = len(STAGE_WIDTHS) * BLOCKS_PER_STAGE
        if self.mid_channels is not None:
            full = [b.mid_channels for b in self.full_blocks()]
            if len(self.mid_channels) != n_blocks or any(
                not 0 <= m <= f for m, f in zip(self.mid_channels, full, strict=True)
            ):
                raise SpecError(f"mid_channels must be {n_blocks} counts within {full}")

    @property
    def stem_channels(self) -> int:
        return _scaled(STEM_WIDTH, self.width)

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    def domain_index(self, name: str) -> int:
        try:
            return self.domain_names.index(name)
        except ValueError:
            raise KeyError(name) from None

    def full_blocks(self) -> tuple[BlockSpec, ...]:
        """The unpruned backbone's blocks: stride 2 in the first block of every stage."""
        blocks, channels = [], self.stem_channels
        for width in STAGE_WIDTHS:
            out = _scaled(width, self.width)
            for i in range(BLOCKS_PER_STAGE):
                blocks.append(BlockSpec(channels, out, out, 2 if i == 0 else 1))
                channels = out
        return tuple(blocks)

    def blocks(self) -> tuple[BlockSpec, ...]:
        full = self.full_blocks()
        if self.mid_channels is None:
            return full
        return tuple(
            replace(b, mid_channels=m) for b, m in zip(full, self.mid_channels, strict=True)
        )

    @property
    def feature_channels(self) -> int:
        return self.full_blocks()[-1].out_channels

    def unpruned(self) -> ModelSpec:
        return replace(self, mid_channels=None)

    def with_domains(self, domains: tuple[DomainSpec, ...]) -> ModelSpec:
        return replace(self, domains=domains)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        try:
            domains = tuple(
                DomainSpec(
                    name=d["name"],
                    labels=tuple(d["labels"]),
                    preprocess=Preprocess(
                        resize=int(d["preprocess"]["resize"]),
                        crop=int(d["preprocess"]["crop"]),
                        mean=tuple(float(v) for v in d["preprocess"]["mean"]),
                        std=tuple(float(v) for v in d["preprocess"]["std"]),
                    ),
                )
                for d in data["domains"]
            )
            mids = data.get("mid_channels")
            return cls(
                domains=domains,
                width=float(data["width"]),
                input_size=int(data["input_size"]),
                arch=str(data["arch"]),
                mid_channels=None if mids is None else tuple(int(m) for m in mids),
            )
        except (KeyError, TypeError) as exc:
            raise SpecError(f"model spec is missing or mistypes a field: {exc!r}") from exc


def _scaled(width: int, multiplier: float) -> int:
    return max(1, int(round(width * multiplier)))
