"""Per-domain datasets held in memory, training augmentation, and the round-robin domain sampler.

Every source (packaged real data, image folders, the Decathlon layout, synthetic data for tests)
produces the same small interface: a `DomainData` with uint8 images already resized to the
domain's `resize` side and centre-cropped square, integer labels and label names. Training
crops and flips from there; evaluation takes the centre crop, which is exactly
`model_store.eval_transform`, so training-time evaluation and serving agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from model_store import DomainSpec, Preprocess, eval_pixels, normalize


@dataclass
class ImageSplit:
    """Images (N, 3, S, S) uint8 and labels (N,) int64 of one split."""

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
class DomainData:
    """One domain: label names in index order, train and test splits, and how to augment."""

    name: str
    labels: tuple[str, ...]
    train: ImageSplit
    test: ImageSplit
    resize: int
    crop: int
    hflip: bool = True  # off for digits and other orientation-sensitive domains

    def __post_init__(self) -> None:
        for split in (self.train, self.test):
            if split.images.shape[-1] != self.resize or split.images.shape[-2] != self.resize:
                raise ValueError(f"{self.name}: images must be stored at {self.resize}px square")
            if len(split) and int(split.targets.max()) >= len(self.labels):
                raise ValueError(f"{self.name}: a target is outside the {len(self.labels)} labels")

    def domain_spec(self) -> DomainSpec:
        """The served description: labels and an eval transform normalised by train statistics."""
        pixels = self.train.images[:4096].to(torch.float64) / 255.0
        mean = tuple(round(float(v), 4) for v in pixels.mean(dim=(0, 2, 3)))
        std = tuple(round(max(float(v), 1e-3), 4) for v in pixels.std(dim=(0, 2, 3)))
        return DomainSpec(self.name, self.labels, Preprocess(self.resize, self.crop, mean, std))


def images_from_arrays(arrays: np.ndarray, resize: int) -> Tensor:
    """Grey (N, H, W) or RGB (N, H, W, 3) uint8 arrays -> stored (N, 3, S, S) via the eval path."""
    pre = Preprocess(resize, resize, (0.0,) * 3, (1.0,) * 3)
    return torch.stack([torch.from_numpy(eval_pixels(Image.fromarray(a), pre)) for a in arrays])


def normalized(pixels: Tensor, pre: Preprocess) -> Tensor:
    """uint8 (N, 3, H, W) tensor -> float32, by the one formula serving uses."""
    return torch.from_numpy(normalize(pixels.numpy(), pre))


def train_batch(
    data: DomainData,
    pre: Preprocess,
    indices: Tensor,
    generator: torch.Generator,
    rows: slice = slice(None),
) -> tuple[Tensor, Tensor]:
    """Random crop (and flip, if allowed) of stored images, normalised: the training transform.

    The random draws cover the whole global batch `indices`, then only `rows` are built, so each
    rank of a distributed run augments its slice exactly as a single process would.
    """
    n, offset = len(indices), data.resize - data.crop
    xs = torch.randint(0, offset + 1, (n,), generator=generator)[rows].tolist()
    ys = torch.randint(0, offset + 1, (n,), generator=generator)[rows].tolist()
    flip = torch.rand(n, generator=generator)[rows] < 0.5 if data.hflip else None
    batch = data.train.images[indices[rows]]
    crops = torch.stack(
        [
            img[:, y : y + data.crop, x : x + data.crop]
            for img, x, y in zip(batch, xs, ys, strict=True)
        ]
    )
    if flip is not None:
        crops[flip] = crops[flip].flip(-1)
    return normalized(crops, pre), data.train.targets[indices[rows]]


def centre_crops(data: DomainData, images: Tensor, pre: Preprocess) -> Tensor:
    """Stored images cut and normalised exactly as the server cuts one (the centre crop)."""
    lo = (data.resize - data.crop) // 2
    return normalized(images[:, :, lo : lo + data.crop, lo : lo + data.crop], pre)


def eval_batches(
    data: DomainData, pre: Preprocess, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """The test split in order, centre-cropped and normalised exactly as the server does."""
    for start in range(0, len(data.test), batch_size):
        images = data.test.images[start : start + batch_size]
        yield centre_crops(data, images, pre), data.test.targets[start : start + batch_size]


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
            self._orders[d] = torch.randperm(n, generator=self.generator)
            self._pos[d] = 0
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
