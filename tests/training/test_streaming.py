"""The streaming data pipeline: image files decoded per batch by DataLoader workers give the
batches the in-memory path gives, whatever the number of workers; the trainer's stream resumes
where it stopped however far it decoded ahead; evaluation cuts a file exactly as the server
does; the recipe (augment, normalize, workers, stage 1) follows the config; and peak memory does
not grow with the number of images."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_store import Preprocess, preprocess_bytes
from training.config import TrainConfig
from training.data import (
    EVAL,
    IMAGENET_MEAN,
    SQUARE,
    DomainData,
    FileSplit,
    ImageSplit,
    RoundRobin,
    TrainStream,
    Work,
    build,
    eval_batches,
    load_batches,
    train_work,
)
from training.sources import load_domain
from training.trainer import Trainer

from .conftest import tiny_config
from .test_sources import class_tree

RESIZE, CROP = 20, 16


def folder_domain(root: Path, resize: int = RESIZE, crop: int = CROP) -> DomainData:
    return load_domain({"source": "folder", "name": "f", "root": str(root)}, resize, crop)


def in_memory(data: DomainData) -> DomainData:
    """The same domain with both splits decoded into memory (the old path)."""

    def materialised(which: str) -> ImageSplit:
        split = data.split(which)
        rows = torch.arange(len(split))
        return ImageSplit(build(data, Work(0, which, rows, SQUARE))[0], split.targets)

    return DomainData(
        data.name,
        data.labels,
        materialised("train"),
        materialised("test"),
        data.resize,
        data.crop,
        data.hflip,
    )


def square_files(root: Path, side: int, count: int = 6) -> None:
    """Square images exactly `side` wide: their stored square is the decoded image itself."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_folder_domains_are_streamed_and_build_the_in_memory_batches(tmp_path: Path) -> None:
    """crop_flip and eval cut a decoded file as they cut a stored square, bit for bit."""
    class_tree(tmp_path, {"ant": 5, "bee": 4})
    streamed = folder_domain(tmp_path)
    assert isinstance(streamed.train, FileSplit) and streamed.streamed
    memory = in_memory(streamed)
    idx = torch.tensor([3, 0, 5, 1, 5])
    for augment in ("crop_flip", "random_resized_crop"):
        if augment == "random_resized_crop":  # on the decoded image: squares of side resize
            square_files(tmp_path / "sq", RESIZE)
            streamed = folder_domain(tmp_path / "sq")
            memory, idx = in_memory(streamed), torch.tensor([2, 0, 1, 3])
        a = build(streamed, train_work(streamed, 0, idx, torch.Generator().manual_seed(4), augment))
        b = build(memory, train_work(memory, 0, idx, torch.Generator().manual_seed(4), augment))
        assert a[0].shape == (len(idx), 3, CROP, CROP)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), augment
    rows = torch.arange(len(streamed.test))
    assert torch.equal(
        build(streamed, Work(0, "test", rows, EVAL))[0],
        build(memory, Work(0, "test", rows, EVAL))[0],
    )


def test_workers_decode_in_processes_and_give_the_same_batches(tmp_path: Path) -> None:
    """`workers` changes where files are decoded (0: here; n: n DataLoader processes), and
    nothing about what is decoded."""
    class_tree(tmp_path, {"ant": 6, "bee": 6})
    data = folder_domain(tmp_path)
    generator = torch.Generator().manual_seed(0)
    works = [train_work(data, 0, torch.randperm(len(data.train))[:5], generator) for _ in range(4)]
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for workers in (0, 2):
        batches = load_batches([data], works, workers)
        first = next(batches)
        assert len(multiprocessing.active_children()) == workers
        seen[workers] = [first, *batches]
    for (x0, y0), (x2, y2) in zip(seen[0], seen[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    config = tiny_config(
        workers=1, domains=[{"source": "folder", "name": "f", "root": str(tmp_path)}]
    )
    trainer = Trainer(config, tmp_path / "run", [data], progress=False)
    assert trainer.stream.workers == 1


def test_the_stream_resumes_at_the_next_batch_not_the_next_decoded(tmp_path: Path) -> None:
    """Workers decode a few batches ahead; the checkpointed state is that of the first batch not
    handed out, so a stream restored from it continues exactly as the first one does."""
    class_tree(tmp_path / "a", {"ant": 7, "bee": 6})
    class_tree(tmp_path / "b", {"cat": 5, "dog": 5}, seed=30)
    data = [folder_domain(tmp_path / "a"), folder_domain(tmp_path / "b")]
    pre = data[0].domain_spec().preprocess

    def stream(workers: int) -> TrainStream:
        sampler = RoundRobin(data, 4, seed=0)
        return TrainStream(
            data, sampler, torch.Generator().manual_seed(1), "crop_flip", workers=workers
        )

    first = stream(workers=2)
    for _ in range(5):  # 2.5 steps: a resumed stream must also start with the right domain
        for d in range(2):
            first.next(d, pre)
    state = first.state()
    resumed = stream(workers=0)
    resumed.load_state(state)
    for _ in range(3):
        for d in range(2):
            a, b = first.next(d, pre), resumed.next(d, pre)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] == 4
    with pytest.raises(RuntimeError, match="domain 0's batch, but domain 1's"):
        resumed.next(0, pre)
        resumed.next(0, pre)
    first.close()


@pytest.mark.parametrize(("resize", "crop", "size"), [(37, 32, (300, 211)), (256, 224, (640, 480))])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_server_cuts_a_file_as_training_evaluates_it(
    tmp_path: Path, resize: int, crop: int, size: tuple[int, int], fmt: str
) -> None:
    """model_store.preprocess_bytes (what the server runs on a request body) of each test file
    equals the training eval batch's row of that file, bit for bit (odd and even margins, JPEG
    decoded at a reduced DCT scale and PNG)."""
    rng = np.random.default_rng(1)
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    for c in ("x", "y"):
        for split in ("train", "test"):
            (tmp_path / split / c).mkdir(parents=True)
            pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
            img = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
            img.save(tmp_path / split / c / f"0{suffix}", fmt)
    data = folder_domain(tmp_path, resize, crop)
    pre = Preprocess(resize, crop, IMAGENET_MEAN, (0.229, 0.224, 0.225))
    (x, _), *_ = eval_batches(data, pre, batch_size=8, workers=1)
    for row in range(len(data.test)):
        served = preprocess_bytes(Path(data.test.path(row)).read_bytes(), pre, 10**8)
        assert np.array_equal(served, x[row].numpy())


def test_the_recipe_follows_the_weights_origin_unless_given() -> None:
    plain = TrainConfig()
    assert (plain.augmentation, plain.normalization, plain.stage1_epochs) == (
        "crop_flip",
        "data",
        2.0,
    )
    pretrained = TrainConfig(arch="resnet18", width=1.0, pretrained="w.pth")
    assert pretrained.augment is None  # recorded as given; the manifest records what it meant
    assert (pretrained.augmentation, pretrained.normalization) == (
        "random_resized_crop",
        "imagenet",
    )
    assert pretrained.stage1_epochs == 0.0  # no stage 1: the file's convs, frozen from the start
    asked = pretrained.override(pretrain_epochs=1.0, augment="crop_flip", normalize="data")
    assert (asked.augmentation, asked.normalization, asked.stage1_epochs) == (
        "crop_flip",
        "data",
        1.0,
    )
    for field, value in (("augment", "mixup"), ("normalize", "cifar"), ("workers", -1)):
        with pytest.raises(ValueError, match=f"{field} must be"):
            TrainConfig(**{field: value})
    old = {k: v for k, v in plain.to_dict().items() if k not in ("augment", "normalize")}
    record = TrainConfig.from_record({**old, "arch": "resnet18", "width": 1.0, "pretrained": "w"})
    assert (record.augmentation, record.normalization) == ("crop_flip", "data")  # as it ran


def test_augment_and_normalize_change_the_run(tmp_path: Path) -> None:
    def first_batch(**changes) -> tuple[torch.Tensor, tuple[float, ...]]:
        config = tiny_config(**changes)
        data = [load_domain(d, config.resize, config.crop) for d in config.domains]
        trainer = Trainer(config, tmp_path / str(len(changes)), data, progress=False)
        return trainer.batch(0)[0], trainer.model.spec.domains[0].preprocess.mean

    base, mean = first_batch()
    rrc, _ = first_batch(augment="random_resized_crop")
    imagenet, imagenet_mean = first_batch(normalize="imagenet")
    assert not torch.equal(base, rrc) and not torch.equal(base, imagenet)
    assert imagenet_mean == IMAGENET_MEAN and mean != IMAGENET_MEAN


PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from training.data import RoundRobin, TrainStream, eval_batches
    from training.sources import load_domain

    root, workers = sys.argv[1], 2
    torch.set_num_threads(1)  # each intra-op thread's malloc arena adds 0-60 MB at random
    entry = {"source": "folder", "name": "f", "root": root, "test_fraction": 0.25}
    data = load_domain(entry, 256, 224)
    pre = data.domain_spec("data", workers).preprocess  # statistics over every training image
    stream = TrainStream([data], RoundRobin([data], 16, 0), torch.Generator().manual_seed(1),
                         "random_resized_crop", workers=workers)
    for _ in range(6):
        stream.next(0, pre)
    stream.close()
    for _, _ in zip(range(2), eval_batches(data, pre, 16, workers)):
        pass
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(own, workers)
    """
)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_images(tmp_path: Path) -> None:
    """The same batches (6 training batches of 16 at 224 px, 2 test batches, statistics over
    every training image) over 64 and 640 image files: peak RSS of the process and of its
    loader workers within 10% + 20 MiB. Decoded into memory, the 640 would hold ~94 MiB more."""
    rng = np.random.default_rng(0)
    big, small = tmp_path / "640", tmp_path / "64"
    for i in range(640):
        pixels = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((224, 224), Image.Resampling.BILINEAR)
        name = Path(f"c{i % 4}") / f"{i}.png"
        (big / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(big / name, compress_level=1)
        if i < 64:
            (small / name).parent.mkdir(parents=True, exist_ok=True)
            (small / name).hardlink_to(big / name)
    peaks = {}
    for root in (small, big):
        run = subprocess.run(
            [sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True, check=True
        )
        peaks[root.name] = [int(v) * 1024 for v in run.stdout.split()]  # ru_maxrss is in KiB
    for n, (small_peak, big_peak) in enumerate(zip(peaks["64"], peaks["640"], strict=True)):
        who = ("process", "workers")[n]
        assert big_peak <= 1.1 * small_peak + 20 * 2**20, (who, peaks)
