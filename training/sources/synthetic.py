"""A tiny, learnable multi-domain source for tests and smoke runs (no files, fully seeded).

Each class of each domain is a random low-resolution colour template; images are the template,
randomly shifted, plus noise. Domains differ by their templates, as real domains differ by style.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

from ..data import DomainData, ImageSplit


def synthetic_domain(
    name: str,
    resize: int,
    crop: int,
    classes: int = 4,
    train_size: int = 256,
    test_size: int = 64,
    noise: float = 0.25,
    seed: int = 0,
) -> DomainData:
    g = torch.Generator().manual_seed(seed * 7919 + zlib.crc32(name.encode()))
    templates = F.interpolate(
        torch.rand(classes, 3, 4, 4, generator=g), size=resize + 4, mode="bilinear"
    )

    def split(n: int) -> ImageSplit:
        targets = torch.randint(0, classes, (n,), generator=g)
        shifts = torch.randint(0, 5, (n, 2), generator=g).tolist()
        images = torch.stack(
            [
                templates[t, :, y : y + resize, x : x + resize]
                for t, (x, y) in zip(targets.tolist(), shifts, strict=True)
            ]
        )
        images = (images + noise * torch.randn(images.shape, generator=g)).clamp(0, 1)
        return ImageSplit((images * 255).round().to(torch.uint8), targets)

    return DomainData(
        name=name,
        labels=tuple(f"class{i}" for i in range(classes)),
        train=split(train_size),
        test=split(test_size),
        resize=resize,
        crop=crop,
    )
