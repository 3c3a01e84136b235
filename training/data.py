"""Per-domain datasets, the training and evaluation transforms, batch loading, and the
round-robin domain sampler.

Every source (packaged real data, image folders, the Decathlon layout, synthetic data for tests)
produces a `DomainData`: label names and a train and a test split of one of two kinds.
- `ImageSplit`: uint8 images already resized to the domain's `resize` side and centre-cropped
  square, held in memory. The packaged sets (MNIST and friends: 28 px, tens of MB at most) stay
  this way: cutting crops out of a tensor is much faster than decoding files
  (benchmarks/data_pipeline.py measures both).
- `FileSplit`: image paths and labels only. Each batch is read and decoded from its files by
  `torch.utils.data.DataLoader` worker processes (`load_batches`), so memory does not grow with
  the dataset (WikiArt's 42k training images would be ~8 GB decoded at 256 px).

Every batch is described by a `Work` (which domain, split and rows, which transform, and the
random draws of its augmentation) planned in the main process, then built where it is decoded.
The draws come from the run's seeded generator before any worker sees them, so a batch is the
same for any number of workers and any number of distributed ranks, and a checkpoint holds the
planning state of the next batch to hand out, however many were decoded ahead (`TrainStream`).

Training transforms (`augment`): "crop_flip" cuts a random `crop` square out of the `resize`
square (and flips, if the domain allows); "random_resized_crop" takes a random box of 8-100% of
the decoded image's area and aspect ratio 3/4-4/3 (torchvision's RandomResizedCrop, drawn once
and clipped to the image rather than retried), resized to `crop`, then flips. Evaluation resizes
the shorter side to `resize` and takes the centre `crop`: exactly `model_store.preprocess_bytes`,
so training-time evaluation and serving agree.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from model_store import (
    DomainSpec,
    ImageError,
    Preprocess,
    decode_image,
    eval_pixels,
    image_to_uint8,
    normalize,
)

AUGMENTS = ("crop_flip", "random_resized_crop")
NORMALIZATIONS = ("data", "imagenet")  # per-domain training statistics, or ImageNet's
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RRC_AREA = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
RRC_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
STATS_IMAGES = 4096  # training images the "data" mean and std are measured on
# Pillow's own decompression-bomb threshold: larger files are skipped as unreadable.
MAX_PIXELS = 89_478_485
# Modes of a Work besides the AUGMENTS: the served cut, and the whole stored square.
EVAL, SQUARE = "eval", "square"


def recipe(augment: str | None, normalization: str | None, pretrained: bool) -> tuple[str, str]:
    """The training transform and the normalisation of a run: the given ones, else those that
    suit where its weights come from. A backbone pretrained on ImageNet expects ImageNet's
    statistics and was trained with random-resized crops (the usual fine-tuning recipe); one
    trained here from scratch, the domains' own statistics and crops of the resized square."""
    chosen = (
        augment or ("random_resized_crop" if pretrained else "crop_flip"),
        normalization or ("imagenet" if pretrained else "data"),
    )
    if chosen[0] not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {chosen[0]!r}")
    if chosen[1] not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {chosen[1]!r}")
    return chosen


def default_workers() -> int:
    """Loader processes when the config leaves them unset: one a core, at most 4 (decoding
    beyond that outruns a CPU train step, and each worker holds a batch in flight)."""
    return min(4, os.cpu_count() or 1)


@dataclass
class ImageSplit:
    """Images (N, 3, S, S) uint8 and labels (N,) int64 of one split, held in memory."""

    images: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, S, S), got {tuple(self.images.shape)}")
        if self.targets.shape != (len(self.images),):
            raise ValueError("one target per image")
        self.targets = self.targets.long()

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, limit: int | None, seed: int = 0) -> ImageSplit:
        """A seeded random subset of at most `limit` images (all when None)."""
        if limit is None or limit >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit]
        return ImageSplit(self.images[idx], self.targets[idx])


@dataclass
class FileSplit:
    """Image files and labels (N,) int64 of one split, decoded per batch.

    Paths are one numpy bytes array, not a list of Path objects: forked loader workers would
    touch every object's reference count and so copy the whole list into each worker."""

    paths: np.ndarray
    targets: Tensor

    def __post_init__(self) -> None:
        self.paths = np.asarray(self.paths, dtype=np.bytes_)
        if self.paths.ndim != 1 or self.targets.shape != (len(self.paths),):
            raise ValueError("one target per file")
        self.targets = self.targets.long()

    @classmethod
    def of(cls, paths: Sequence[os.PathLike[str] | str], targets: Tensor) -> FileSplit:
        return cls(np.array([os.fsencode(p) for p in paths], dtype=np.bytes_), targets)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        return os.fsdecode(self.paths[i])


Split = ImageSplit | FileSplit


@dataclass
class DomainData:
    """One domain: label names in index order, train and test splits, and how to augment."""

    name: str
    labels: tuple[str, ...]
    train: Split
    test: Split
    resize: int
    crop: int
    hflip: bool = True  # off for digits and other orientation-sensitive domains

    def __post_init__(self) -> None:
        for split in (self.train, self.test):
            if isinstance(split, ImageSplit) and split.images.shape[-2:] != (
                self.resize,
                self.resize,
            ):
                raise ValueError(f"{self.name}: images must be stored at {self.resize}px square")
            if len(split) and int(split.targets.max()) >= len(self.labels):
                raise ValueError(f"{self.name}: a target is outside the {len(self.labels)} labels")

    @property
    def streamed(self) -> bool:
        """Whether any split is read from files (and so worth decoding in worker processes)."""
        return isinstance(self.train, FileSplit) or isinstance(self.test, FileSplit)

    def split(self, which: str) -> Split:
        return self.train if which == "train" else self.test

    def domain_spec(self, normalization: str = "data", workers: int | None = None) -> DomainSpec:
        """The served description: labels and the eval transform, normalised by this domain's
        training statistics ("data": mean and std of up to STATS_IMAGES training images, whole
        `resize` squares) or by ImageNet's ("imagenet": what a backbone pretrained there saw)."""
        if normalization == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif normalization == "data":
            mean, std = self._statistics(workers)
        else:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        return DomainSpec(self.name, self.labels, Preprocess(self.resize, self.crop, mean, std))

    def _statistics(self, workers: int | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and (unbiased) std of the first training images: exact integer sums
        image by image, so the figures do not depend on the batching and the peak memory does
        not grow with the images (a batch of float64 copies at 256 px is hundreds of MB)."""
        n = min(len(self.train), STATS_IMAGES)
        works = (Work(0, "train", torch.arange(i, min(i + 32, n)), SQUARE) for i in range(0, n, 32))
        total = torch.zeros(3, dtype=torch.int64)
        squares = torch.zeros(3, dtype=torch.int64)
        count = 0
        for pixels, _ in load_batches([self], works, workers):
            for image in pixels:  # batch-sized temporaries would stay with the allocator
                wide = image.to(torch.int32)
                total += wide.sum(dim=(1, 2), dtype=torch.int64)
                squares += (wide * wide).sum(dim=(1, 2), dtype=torch.int64)
                count += wide[0].numel()
        mean = total.double() / (255.0 * count)
        var = (squares.double() / 255.0**2 - count * mean * mean) / max(count - 1, 1)
        std = var.clamp_min(0).sqrt()
        return (
            tuple(round(float(v), 4) for v in mean),
            tuple(round(max(float(v), 1e-3), 4) for v in std),
        )


def images_from_arrays(arrays: np.ndarray, resize: int) -> Tensor:
    """Grey (N, H, W) or RGB (N, H, W, 3) uint8 arrays -> stored (N, 3, S, S) via the eval path."""
    pre = Preprocess(resize, resize, (0.0,) * 3, (1.0,) * 3)
    return torch.stack([torch.from_numpy(eval_pixels(Image.fromarray(a), pre)) for a in arrays])


def normalized(pixels: Tensor, pre: Preprocess) -> Tensor:
    """uint8 (N, 3, H, W) tensor -> float32, by the one formula serving uses."""
    return torch.from_numpy(normalize(pixels.numpy(), pre))


# ---- one batch: what to build (planned here), and building it (here or in a worker) ----------


@dataclass(frozen=True)
class Work:
    """One batch to build: `rows` of domain `domain`'s `split`, cut by `mode` (an AUGMENTS name,
    EVAL or SQUARE) with this batch's random `draws` (one row per image; see `draw`)."""

    domain: int
    split: str
    rows: Tensor
    mode: str
    draws: Tensor | None = None


def draw(data: DomainData, n: int, augment: str, generator: torch.Generator) -> tuple[Tensor, ...]:
    """The random draws of n training images, in a fixed order from `generator`.

    crop_flip: x and y offsets of the crop in the stored square, flip. random_resized_crop:
    area fraction, log aspect ratio, relative x and y position of the box, flip. crop_flip
    draws exactly what the in-memory trainer always drew, so earlier runs repeat bit for bit.
    """
    if augment == "crop_flip":
        offset = data.resize - data.crop
        columns = [
            torch.randint(0, offset + 1, (n,), generator=generator).double(),
            torch.randint(0, offset + 1, (n,), generator=generator).double(),
        ]
    elif augment == "random_resized_crop":
        columns = [
            torch.empty(n, dtype=torch.float64).uniform_(*RRC_AREA, generator=generator),
            torch.empty(n, dtype=torch.float64).uniform_(*RRC_LOG_RATIO, generator=generator),
            torch.rand(n, generator=generator, dtype=torch.float64),
            torch.rand(n, generator=generator, dtype=torch.float64),
        ]
    else:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    flip = torch.rand(n, generator=generator) < 0.5 if data.hflip else torch.zeros(n, dtype=bool)
    return (*columns, flip.double())


def train_work(
    data: DomainData,
    domain: int,
    indices: Tensor,
    generator: torch.Generator,
    augment: str = "crop_flip",
    rows: slice = slice(None),
) -> Work:
    """The training batch `indices` of `data`, its draws taken for the whole global batch and
    then only `rows` kept, so each rank of a distributed run builds its slice exactly as a
    single process would."""
    draws = torch.stack(draw(data, len(indices), augment, generator), dim=1)
    return Work(domain, "train", indices[rows], augment, draws[rows])


def build(data: DomainData, work: Work) -> tuple[Tensor, Tensor]:
    """The uint8 (n, 3, S, S) pixels and the targets of one planned batch."""
    split = data.split(work.split)
    targets = split.targets[work.rows]
    if isinstance(split, ImageSplit):
        return _from_squares(data, split.images[work.rows], work), targets
    images = [_from_file(data, split.path(int(i)), work, k) for k, i in enumerate(work.rows)]
    return torch.stack(images), targets


def _from_squares(data: DomainData, squares: Tensor, work: Work) -> Tensor:
    """A batch cut out of stored `resize` squares (in memory, or just decoded)."""
    if work.mode == SQUARE:
        return squares
    if work.mode == EVAL:
        lo = (data.resize - data.crop) // 2
        return squares[:, :, lo : lo + data.crop, lo : lo + data.crop]
    assert work.draws is not None  # every training Work carries its draws
    if work.mode == "random_resized_crop":
        pictures = [Image.fromarray(s.permute(1, 2, 0).contiguous().numpy()) for s in squares]
        return torch.stack(
            [_resized_crop(p, data.crop, d) for p, d in zip(pictures, work.draws, strict=True)]
        )
    xs, ys = work.draws[:, 0].long().tolist(), work.draws[:, 1].long().tolist()
    crops = torch.stack(
        [
            img[:, y : y + data.crop, x : x + data.crop]
            for img, x, y in zip(squares, xs, ys, strict=True)
        ]
    )
    flip = work.draws[:, -1] > 0
    crops[flip] = crops[flip].flip(-1)
    return crops


def _from_file(data: DomainData, path: str, work: Work, k: int) -> Tensor:
    """Image k of a batch, read and decoded from its file (JPEGs at the smallest DCT scale
    that keeps `resize`, as serving decodes them), then cut as the batch says."""
    try:
        with open(path, "rb") as f:
            img = decode_image(f.read(), MAX_PIXELS, min_side=data.resize)
    except (ImageError, OSError) as exc:
        # Files were checked when the domain was loaded; this one changed or is truncated.
        raise ImageError(f"{path}: cannot decode this training image any more ({exc})") from exc
    if work.mode == EVAL:
        return torch.from_numpy(eval_pixels(img, Preprocess(data.resize, data.crop, *_NEUTRAL)))
    if work.mode == "random_resized_crop":
        assert work.draws is not None
        return _resized_crop(img, data.crop, work.draws[k])
    square = torch.from_numpy(eval_pixels(img, Preprocess(data.resize, data.resize, *_NEUTRAL)))
    sub = Work(work.domain, work.split, work.rows[k : k + 1], work.mode, _row(work.draws, k))
    return _from_squares(data, square[None], sub)[0]


_NEUTRAL = ((0.0,) * 3, (1.0,) * 3)  # mean/std unused: eval_pixels stops before normalising


def _row(draws: Tensor | None, k: int) -> Tensor | None:
    return None if draws is None else draws[k : k + 1]


def _resized_crop(img: Image.Image, size: int, draws: Tensor) -> Tensor:
    """torchvision's RandomResizedCrop from one set of draws (area, log ratio, x, y, flip): the
    box is clipped to the image instead of redrawn, then resized to size x size (bilinear)."""
    area, log_ratio, u, v, flip = draws.tolist()
    width, height = img.size
    ratio, target = math.exp(log_ratio), area * width * height
    w = min(width, max(1, round(math.sqrt(target * ratio))))
    h = min(height, max(1, round(math.sqrt(target / ratio))))
    x, y = min(int(u * (width - w + 1)), width - w), min(int(v * (height - h + 1)), height - h)
    out = img.convert("RGB").resize(
        (size, size), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h), reducing_gap=None
    )
    pixels = torch.from_numpy(image_to_uint8(out))
    return pixels.flip(-1) if flip > 0 else pixels


class _Builder(Dataset):
    """What a loader worker holds: the domains (paths and labels, or small in-memory sets);
    it is handed each planned batch and builds it."""

    def __init__(self, domains: Sequence[DomainData]):
        self.domains = list(domains)

    def __getitem__(self, work: Work) -> tuple[Tensor, Tensor]:
        return build(self.domains[work.domain], work)

    def __len__(self) -> int:  # the sampler, not an index range, says what is built
        raise TypeError("batches come from a stream of Work, not from indices")


def load_batches(
    domains: Sequence[DomainData],
    works: Iterable[Work],
    workers: int | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The planned batches, built in order: by `workers` DataLoader processes when a domain
    is read from files (None: `default_workers()`), else here, where cutting stored tensors is
    faster than sending them between processes. `works` is consumed a few batches ahead."""
    workers = default_workers() if workers is None else workers
    if workers == 0 or not any(d.streamed for d in domains):
        for work in works:
            yield build(domains[work.domain], work)
        return
    loader = DataLoader(
        _Builder(domains),
        batch_size=None,  # each Work is a whole batch, built by one worker
        sampler=works,  # type: ignore[arg-type]  # an iterable of Work, read in order
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2,
    )
    yield from loader


def eval_works(
    data: DomainData, which: str, batch_size: int, limit: int | None = None
) -> Iterator[Work]:
    """The split's first `limit` images (all when None) in order, in batches, cut as served."""
    n = len(data.split(which)) if limit is None else min(limit, len(data.split(which)))
    for start in range(0, n, batch_size):
        yield Work(0, which, torch.arange(start, min(start + batch_size, n)), EVAL)


def eval_batches(
    data: DomainData, pre: Preprocess, batch_size: int, workers: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """The test split in order, centre-cropped and normalised exactly as the server does."""
    for pixels, targets in load_batches([data], eval_works(data, "test", batch_size), workers):
        yield normalized(pixels, pre), targets


class RoundRobin:
    """One shuffled batch per domain per step, so every step sees (and shapes the union of) all
    domains. Each domain reshuffles when exhausted; an epoch is the largest domain's pass.

    The sampler is global: every rank of a distributed run holds the same one and draws the same
    batch, then takes its rows of it, so its checkpointed state fits any number of ranks."""

    def __init__(self, domains: list[DomainData], batch_size: int, seed: int):
        self.domains, self.batch_size = domains, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._orders = [torch.empty(0, dtype=torch.long) for _ in domains]
        self._pos = [0] * len(domains)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, max(-(-len(d.train) // self.batch_size) for d in self.domains))

    def next_indices(self, d: int) -> Tensor:
        """The next batch of train indices of domain d (seeded, resumable by state)."""
        n = len(self.domains[d].train)
        if self._pos[d] + self.batch_size > len(self._orders[d]):
            self._orders[d] = torch.randperm(n, generator=self.generator)  # replaced, never
            self._pos[d] = 0  # written in place: a state() taken earlier stays valid
        idx = self._orders[d][self._pos[d] : self._pos[d] + self.batch_size]
        self._pos[d] += self.batch_size
        return idx

    def state(self) -> dict[str, Tensor]:
        """Sampler state as tensors, for a safetensors checkpoint."""
        out = {"rng": self.generator.get_state(), "pos": torch.tensor(self._pos)}
        out.update({f"order.{i}": o for i, o in enumerate(self._orders)})
        return out

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["rng"])
        self._pos = state["pos"].tolist()
        self._orders = [state[f"order.{i}"] for i in range(len(self.domains))]


class TrainStream:
    """The trainer's batches: one per domain per step, in domain order, planned here by the
    round-robin sampler and the augmentation generator, built ahead by loader workers.

    `state()` is the planning state (sampler, augmentation generator) of the next batch not yet
    handed out, so a checkpoint resumes exactly where training stopped, whatever was decoded
    ahead; a stream created after `load_state` continues from there."""

    def __init__(
        self,
        data: list[DomainData],
        sampler: RoundRobin,
        generator: torch.Generator,
        augment: str,
        rows: Callable[[int], slice] = lambda n: slice(None),
        workers: int | None = None,
        pin_memory: bool = False,
    ):
        self.data, self.sampler, self.generator = data, sampler, generator
        self.augment, self.rows, self.workers, self.pin_memory = augment, rows, workers, pin_memory
        # (domain, global batch size, planning state before it) of each batch planned
        self._planned: deque[tuple[int, int, dict[str, dict[str, Tensor]]]] = deque()
        self._batches: Iterator[tuple[Tensor, Tensor]] | None = None

    def _snapshot(self) -> dict[str, dict[str, Tensor]]:
        return {"sampler": self.sampler.state(), "augment": {"rng": self.generator.get_state()}}

    def _plan(self) -> Iterator[Work]:
        while True:
            for d, data in enumerate(self.data):
                state = self._snapshot()
                idx = self.sampler.next_indices(d)
                self._planned.append((d, len(idx), state))
                yield train_work(data, d, idx, self.generator, self.augment, self.rows(len(idx)))

    def next(self, d: int, pre: Preprocess) -> tuple[Tensor, Tensor, int]:
        """Domain d's next batch (this process's `rows` of it), normalised with `pre`, and the
        global batch's size; domains must be asked for in order."""
        if self._batches is None:
            self._batches = load_batches(self.data, self._plan(), self.workers, self.pin_memory)
        pixels, targets = next(self._batches)
        planned, size, _ = self._planned.popleft()  # queued when the batch was planned
        if planned != d:
            raise RuntimeError(f"asked for domain {d}'s batch, but domain {planned}'s is next")
        return normalized(pixels, pre), targets, size

    def state(self) -> dict[str, dict[str, Tensor]]:
        """{"sampler": ..., "augment": {"rng": ...}} as of the next batch to hand out."""
        return self._planned[0][2] if self._planned else self._snapshot()

    def load_state(self, state: dict[str, dict[str, Tensor]]) -> None:
        if self._batches is not None:
            raise RuntimeError("load the state before the first batch is drawn")
        self.sampler.load_state(state["sampler"])
        self.generator.set_state(state["augment"]["rng"])

    def close(self) -> None:
        """Stop the loader workers (they also stop when the stream is collected)."""
        if self._batches is not None:
            self._batches.close()  # type: ignore[attr-defined]
            self._batches = None
            self._planned.clear()
