"""Is the data pipeline fast enough? Training throughput at 224 px, measured apart:

- the loader alone: generated photo-like JPEGs (500x375, the size of typical fine-grained
  datasets' images) in a folder domain, decoded, random-resized-cropped to 224, flipped and
  normalised by `TrainStream` with its DataLoader workers, batches pulled as fast as they come;
- the train step alone: ResNet-18 (width 1) at 224 px, one stage-2 step (convs frozen; BN, head
  and switch scores learn), on a batch already in memory;
- for the small packaged sets, the in-memory path against streaming the same images from PNG
  files (MNIST's first images at the bundled model's 36/32 px), to show which is faster there.

The target (issue 28): loader images/s >= 1.5 x train-step images/s at 224 px on ResNet-18.
Writes benchmarks/results/data_pipeline.json. Run: `python -m benchmarks.data_pipeline`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import RESULTS, machine, write_result
from model_store import DomainSpec, ModelSpec, Preprocess, build_model
from training.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DomainData,
    RoundRobin,
    TrainStream,
    default_workers,
)
from training.sources import load_domain
from training.switches import Switches

log = logging.getLogger("benchmarks")


def photos(root: Path, count: int, size: tuple[int, int] = (500, 375)) -> None:
    """Photo-like JPEGs (smooth colour fields plus grain), four classes."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC))
        grain = rng.normal(0, 8, img.shape)
        Image.fromarray(np.clip(img + grain, 0, 255).astype(np.uint8)).save(
            folder / f"{i}.jpg", quality=90
        )


def rate(step: Callable[[], int], warmup: int, seconds: float) -> dict[str, float]:
    """Images/s of `step` (returns the images it handled) over at least `seconds` of calls
    after `warmup` calls (worker start-up, allocator warm-up)."""
    for _ in range(warmup):
        step()
    images, calls, start = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        images += step()
        calls += 1
    return {"images_per_s": images / elapsed, "calls": calls, "seconds": round(elapsed, 2)}


def loader_rate(
    data: DomainData, batch: int, workers: int, augment: str, seconds: float
) -> dict[str, float]:
    pre = Preprocess(data.resize, data.crop, IMAGENET_MEAN, IMAGENET_STD)
    sampler = RoundRobin([data], batch, seed=0)
    stream = TrainStream(
        [data], sampler, torch.Generator().manual_seed(1), augment, workers=workers
    )
    try:
        return rate(
            lambda: len(stream.next(0, pre)[1]), warmup=2 * max(workers, 1), seconds=seconds
        )
    finally:
        stream.close()


def train_step_rate(batch: int, crop: int, seconds: float) -> dict[str, float]:
    """One stage-2 step of ResNet-18: masked forward, cross-entropy, backward into BN, head
    and switch scores (convs frozen, as with a pretrained backbone), SGD."""
    pre = Preprocess(crop + crop // 7, crop, IMAGENET_MEAN, IMAGENET_STD)
    spec = ModelSpec(
        domains=(DomainSpec("photos", tuple(f"c{i}" for i in range(100)), pre),),
        width=1.0,
        input_size=crop,
        arch="resnet18",
    )
    model = build_model(spec).to(memory_format=torch.channels_last).train()
    for p in model.shared_parameters():
        p.requires_grad_(False)
    switches = Switches(list(spec.gated_filters()), 1, 0.01, 1.0)
    sgd = torch.optim.SGD([*model.domain_parameters(), *switches.parameters()], lr=0.01)
    x = torch.randn(batch, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,))

    def step() -> int:
        sgd.zero_grad(set_to_none=True)
        logits = model(x, 0, [m[0] for m in switches.all_masks()])
        F.cross_entropy(logits, y).backward()
        sgd.step()
        return batch

    return rate(step, warmup=1, seconds=seconds)


def packaged_rates(images: int, batch: int, workers: int, seconds: float, tmp: Path) -> dict:
    """MNIST in memory (as the packaged sources keep it) against the same images as PNG files
    streamed through the folder source, both at 36/32 px with crop_flip."""
    memory = load_domain(
        {"source": "mnist", "name": "digits", "train_limit": images, "test_limit": 16}, 36, 32
    )
    root = tmp / "mnist"
    for i, (pixels, label) in enumerate(
        zip(memory.train.images, memory.train.targets, strict=True)
    ):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[0].numpy()).save(folder / f"{i}.png")  # grey: one channel
    files = load_domain(
        {"source": "folder", "name": "digits", "root": str(root), "test_fraction": 0.05}, 36, 32
    )
    return {
        "in_memory": loader_rate(memory, batch, workers, "crop_flip", seconds),
        "streamed_png": loader_rate(files, batch, workers, "crop_flip", seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_pipeline", description=__doc__)
    parser.add_argument("--images", type=int, default=512, help="generated JPEGs (512)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (32)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="loader workers")
    parser.add_argument("--seconds", type=float, default=20.0, help="timing per figure (20)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = {"_machine": machine(), **{k: v for k, v in vars(args).items() if k != "out"}}
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        photos(Path(tmp) / "photos", args.images)
        data = load_domain(
            {"source": "folder", "name": "photos", "root": f"{tmp}/photos", "test_fraction": 0.1},
            256,
            224,
        )
        for augment in ("random_resized_crop", "crop_flip"):
            figures[f"loader_{augment}"] = loader_rate(
                data, args.batch, args.workers, augment, args.seconds
            )
            log.info("loader %s: %s", augment, figures[f"loader_{augment}"])
        figures["train_step_resnet18"] = train_step_rate(args.batch, 224, args.seconds)
        log.info("train step: %s", figures["train_step_resnet18"])
        figures["loader_over_train_step"] = round(
            figures["loader_random_resized_crop"]["images_per_s"]
            / figures["train_step_resnet18"]["images_per_s"],
            2,
        )
        figures["packaged_mnist_36px"] = packaged_rates(
            2048, 128, args.workers, args.seconds, Path(tmp)
        )
        log.info("packaged: %s", figures["packaged_mnist_36px"])
    write_result("data_pipeline", settings, figures, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
