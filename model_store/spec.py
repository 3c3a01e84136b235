"""The shape of a stored model, as plain data.

A network is rebuilt from a ModelSpec alone (then its weights load with strict checks), so the
full masked network, the pruned network and a single domain's view are one class with different
specs. Everything here round-trips through JSON for the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """An architecture's shape, independent of width and pruning.

    family "decathlon": 3x3 stride-1 stem conv + BN (no ReLU), stride 2 at every stage start,
    parameter-free shortcuts (avg-pool + zero channels), BN + ReLU before the pool (Visual
    Decathlon ResNet-26). family "torchvision": 7x7 stride-2 stem conv + BN + ReLU + 3x3
    stride-2 max-pool, stride 2 from the second stage on, 1x1 conv + BN ("downsample")
    shortcuts where the shape changes (torchvision's and timm's ResNets).
    """

    family: str
    block: str  # "basic" (conv3x3, conv3x3) or "bottleneck" (conv1x1, conv3x3, conv1x1 x4)
    stem_width: int
    depths: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # base width per stage (a bottleneck's output is 4x)

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def gates_per_block(self) -> int:
        """Gated convs per block: basic gates conv1; bottleneck gates conv1 and conv2."""
        return 2 if self.block == "bottleneck" else 1

    @property
    def downsampling(self) -> int:
        """How many times the input side is halved before the pool (input_size divides by it)."""
        return 2 ** (len(self.depths) + (1 if self.family == "torchvision" else 0))


_IMAGENET_WIDTHS = (64, 128, 256, 512)
ARCHITECTURES: dict[str, Architecture] = {
    "resnet26_decathlon": Architecture("decathlon", "basic", 32, (4, 4, 4), (64, 128, 256)),
    "resnet18": Architecture("torchvision", "basic", 64, (2, 2, 2, 2), _IMAGENET_WIDTHS),
    "resnet34": Architecture("torchvision", "basic", 64, (3, 4, 6, 3), _IMAGENET_WIDTHS),
    "resnet50": Architecture("torchvision", "bottleneck", 64, (3, 4, 6, 3), _IMAGENET_WIDTHS),
}


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
    """One residual block. `gated` holds the filter count of each gated conv (basic: conv1;
    bottleneck: conv1, conv2): the only widths pruning changes. `projection`: a 1x1 conv + BN
    shortcut (torchvision's downsample) rather than the identity or the padded pool."""

    in_channels: int
    gated: tuple[int, ...]
    out_channels: int
    stride: int
    projection: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """Architecture + width + which filters of each gated conv this network holds.

    `mid_channels` is None for the full backbone; a pruned network lists how many filters each
    gated conv keeps, in network order (one per basic block; conv1 then conv2 of each
    bottleneck). The full backbone's shape (the cost baseline) is always derivable.
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
        step = self.architecture.downsampling
        if self.input_size < step or self.input_size % step:
            # Every halving exact: conv, pool and shortcut stay aligned at every stage.
            raise SpecError(
                f"{self.arch} needs input_size a multiple of {step}, got {self.input_size}"
            )
        if not self.domains:
            raise SpecError("a model needs at least one domain")
        if any(d.preprocess.crop != self.input_size for d in self.domains):
            raise SpecError(
                f"every domain's preprocess.crop must equal input_size {self.input_size}"
            )
        for problem in domain_name_problems([d.name for d in self.domains]):
            raise SpecError(problem)
        if self.mid_channels is not None:
            full = self.unpruned().gated_filters()
            if len(self.mid_channels) != len(full) or any(
                not 0 <= m <= f for m, f in zip(self.mid_channels, full, strict=True)
            ):
                raise SpecError(f"mid_channels must be {len(full)} counts within {list(full)}")

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def stem_channels(self) -> int:
        return _scaled(self.architecture.stem_width, self.width)

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    def domain_index(self, name: str) -> int:
        try:
            return self.domain_names.index(name)
        except ValueError:
            raise KeyError(name) from None

    def full_blocks(self) -> tuple[BlockSpec, ...]:
        """The unpruned backbone's blocks, stage after stage: stride 2 in the first block of
        every stage (torchvision: of every stage after the first, the stem has halved twice)."""
        arch, blocks, channels = self.architecture, [], self.stem_channels
        torchvision = arch.family == "torchvision"
        for stage, (depth, base) in enumerate(zip(arch.depths, arch.widths, strict=True)):
            mid = _scaled(base, self.width)
            out = mid * arch.expansion
            for i in range(depth):
                stride = 2 if i == 0 and (stage > 0 or not torchvision) else 1
                projection = torchvision and (stride != 1 or channels != out)
                gated = (mid,) * arch.gates_per_block
                blocks.append(BlockSpec(channels, gated, out, stride, projection))
                channels = out
        return tuple(blocks)

    def blocks(self) -> tuple[BlockSpec, ...]:
        """This network's blocks: the full ones with the kept filter counts."""
        full = self.full_blocks()
        if self.mid_channels is None:
            return full
        kept, out = iter(self.mid_channels), []
        for b in full:
            out.append(replace(b, gated=tuple(next(kept) for _ in b.gated)))
        return tuple(out)

    def stages(self) -> tuple[tuple[BlockSpec, ...], ...]:
        """blocks(), grouped by stage."""
        blocks, out = iter(self.blocks()), []
        for depth in self.architecture.depths:
            out.append(tuple(next(blocks) for _ in range(depth)))
        return tuple(out)

    def gated_filters(self) -> tuple[int, ...]:
        """Filters this network holds in each gated conv, in gate order."""
        return tuple(k for b in self.blocks() for k in b.gated)

    def mask_keys(self) -> tuple[str, ...]:
        """The weights-file key of each gated conv's (domains, filters) mask, in gate order, so
        that a reader without torch (the server's filter map) finds them."""
        if self.architecture.family == "decathlon":
            return tuple(f"blocks.{i}.masks" for i in range(len(self.full_blocks())))
        return tuple(
            f"layer{s + 1}.{i}.mask{g + 1}"
            for s, depth in enumerate(self.architecture.depths)
            for i in range(depth)
            for g in range(self.architecture.gates_per_block)
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
