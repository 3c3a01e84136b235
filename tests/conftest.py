"""Shared fixtures: seeded RNGs, a tiny multi-domain spec, random masks and BN statistics."""

from __future__ import annotations

import logging
import os
import random
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from model_store import DomainSpec, ModelSpec, MultiDomainResNet, Preprocess, build_model
from model_store.spec import ARCHITECTURES

# Tests run tiny networks and start server/training subprocesses side by side on 2 cores. With
# several OpenMP thread pools spinning on the same cores, tiny ops slow down up to 100x; one
# thread per process is both faster and stable. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY_PRE = Preprocess(resize=18, crop=16, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
ARCHS = tuple(ARCHITECTURES)
# Tiny but whole: every stage, block kind and shortcut of the architecture, at the smallest input
# its downsampling allows (ImageNet layouts halve 5 times: 32 px leaves 1 px in stage 4).
TINY_SIZE = {arch: 16 if arch == "resnet26_decathlon" else 32 for arch in ARCHS}
TINY_WIDTH = {arch: 0.25 if arch == "resnet26_decathlon" else 0.125 for arch in ARCHS}


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the same seeds and with none of our settings in the environment."""
    for key in list(os.environ):
        if key.startswith("BAP_"):
            monkeypatch.delenv(key)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_log_levels() -> Iterator[None]:
    """A CLI run in-process sets its package logger's level (INFO by default): put every level
    back, so no later test inherits it."""
    names = ("training", "server", "model_store", "benchmarks")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def tiny_spec(
    num_domains: int = 3,
    width: float | None = None,
    classes: tuple[int, ...] = (3, 4, 5),
    arch: str = "resnet26_decathlon",
) -> ModelSpec:
    size = TINY_SIZE[arch]
    pre = Preprocess(resize=size + 2, crop=size, mean=TINY_PRE.mean, std=TINY_PRE.std)
    domains = tuple(
        DomainSpec(f"dom{i}", tuple(f"c{j}" for j in range(classes[i % len(classes)])), pre)
        for i in range(num_domains)
    )
    width = TINY_WIDTH[arch] if width is None else width
    return ModelSpec(domains=domains, width=width, input_size=size, arch=arch)


def tiny_input(spec: ModelSpec, batch: int) -> torch.Tensor:
    """A random batch at the spec's input size."""
    return torch.randn(batch, 3, spec.input_size, spec.input_size)


def randomize(model: MultiDomainResNet, keep_prob: float = 0.5, seed: int = 0) -> MultiDomainResNet:
    """Random masks (some filters off for every domain) and non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_var") and module.weight.dim() == 2:
                module.running_mean.normal_(generator=g)
                module.running_var.uniform_(0.5, 2.0, generator=g)
                module.weight.normal_(1.0, 0.3, generator=g)
                module.bias.normal_(0.0, 0.3, generator=g)
        for masks in model.gated_masks():
            masks.copy_((torch.rand(masks.shape, generator=g) < keep_prob).float())
    return model.eval()


@pytest.fixture(params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    """Each registered architecture, for tests that must hold for every one."""
    return request.param


@pytest.fixture
def spec() -> ModelSpec:
    return tiny_spec()


@pytest.fixture
def masked_model(spec: ModelSpec) -> MultiDomainResNet:
    return randomize(build_model(spec))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none (what a bomb's header says)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


SLOW_FOLDERS = ("deploy", "benchmarks")  # real servers, wrk, Prometheus, browsers, benchmarks


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fast tier (`make test-fast`: -m "not slow") leaves out whole folders of end-to-end
    runs as well as the tests marked slow one by one; `make test` runs everything."""
    for item in items:
        if any(part in SLOW_FOLDERS for part in item.path.relative_to(item.config.rootpath).parts):
            item.add_marker(pytest.mark.slow)
