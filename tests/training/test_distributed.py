"""Data-parallel training under torchrun on the CPU (gloo): 2 ranks match 1, a killed worker is
restarted from the checkpoint, and a 2-rank checkpoint resumes in 1 process.

Every run starts from one small pretrained backbone (stage 1 done once, in the fixture) so that
the BAP stage being compared is not dominated by how a from-scratch pretraining happened to go.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model_store import load_version
from tests.training.conftest import TINY_DOMAINS, tiny_config
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.config import TrainConfig
from training.publish import publish_result
from training.trainer import train

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not Path("/proc/self/status").is_file(),
    reason="needs torch.distributed (gloo) and Linux /proc",
)
ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
RUN_TIMEOUT = 150  # seconds for one torchrun; a tiny run takes ~15 s on 2 busy cores
RESUMED = re.compile(r"resumed run_dir=\S+ phase=(\w+) step=(\d+)")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1 only (every weight, all domains), published unpruned: the shared start."""
    root = tmp_path_factory.mktemp("backbone")
    config = tiny_config(epochs=0, budget=1.0)
    publish_result(config, train(config, root / "run", progress=False), root / "store")
    return root / "store" / config.name / "v1"


def bap_config(backbone: Path, **changes) -> TrainConfig:
    """Stage 2 from the backbone, 32 images per domain per rank (a global batch of 64)."""
    domains = [dict(d, train_size=192) for d in TINY_DOMAINS]
    return tiny_config(
        domains=domains,
        backbone=str(backbone),
        pretrain_epochs=0,
        batch_size=64,
        **{"budget": 0.75, "budget_control": "dual", "score_lr": 0.005, **changes},
    )


def write_config(config: TrainConfig, folder: Path) -> Path:
    path = folder / "config-in.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict()))
    return path


def train_args(config: Path, folder: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "training",
        "-v",
        "train",
        "--config",
        str(config),
        "--store",
        str(folder / "store"),
        "--run-dir",
        str(folder / "run"),
        "--quiet",
        *extra,
    ]


@contextmanager
def launched(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """Start a command in its own session; on the way out its whole process group is killed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run(args: list[str], log: Path) -> str:
    with launched(args, log) as proc:
        proc.wait(timeout=RUN_TIMEOUT)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never saw {what} (exit code {proc.poll()})")
        time.sleep(0.02)


def in_bap_stage(run_dir: Path) -> bool:
    """A checkpoint from inside stage 2 (its step > 0) exists."""
    try:
        with safe_open(str(run_dir / CHECKPOINT), framework="pt") as fh:
            meta = json.loads(fh.metadata()["meta"])
    except (OSError, ValueError, KeyError):
        return False  # not written yet
    return meta["phase"] == "bap" and meta["step"] > 0


def worker(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process with this RANK (its children, read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"\nPPid:\t{torchrun_pid}\n" in status and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} worker under torchrun pid {torchrun_pid}")


def final_masks(run_dir: Path) -> list[torch.Tensor]:
    found = load_checkpoint(run_dir)
    assert found is not None and found[1]["phase"] == "done"
    scores = found[0]["switches"]
    return [scores[f"scores.{i}"] > 0 for i in range(len(scores))]


def test_two_ranks_match_one(backbone: Path, tmp_path: Path) -> None:
    """Same config, seed and global batch on 1 and 2 ranks: the same masks and accuracies.

    Not bitwise: with 2 ranks each BatchNorm normalises with the statistics of its own 32
    images instead of all 64 (DDP has no SyncBatchNorm for our per-domain BN), so the
    activations, the gradients and hence the trajectory differ slightly, and the running
    variances averaged over ranks leave out the spread between the shard means. With 32
    images a shard that changes a few switches near zero and a few test images (48 per domain;
    one image is 2 points): we allow 5% of the masks and 10 points of accuracy. That nothing
    else differs is shown exactly by `test_sharding_is_exact_when_bn_is_shard_independent`.
    """
    config = bap_config(backbone)
    one = tmp_path / "one"
    publish_result(config, train(config, one / "run", progress=False), one / "store")
    two = tmp_path / "two"
    out = run([*TORCHRUN, *train_args(write_config(config, two), two)], tmp_path / "two.log")
    assert "rank=1 of 2" in out and "backend=gloo" in out

    manifest_one, _ = load_version(one / "store", config.name)
    manifest_two, model_two = load_version(two / "store", config.name)  # a valid version
    masks_one, masks_two = final_masks(one / "run"), final_masks(two / "run")
    agree = sum(int((a == b).sum()) for a, b in zip(masks_one, masks_two, strict=True))
    assert agree / sum(m.numel() for m in masks_one) >= 0.95
    for name, figures in manifest_one.domains.items():
        theirs = manifest_two.domains[name]
        assert abs(figures.accuracy - theirs.accuracy) <= 0.10, name
        assert abs(figures.cost_fraction - theirs.cost_fraction) <= 0.02, name
        assert theirs.cost_fraction <= config.budget
    with torch.no_grad():
        assert model_two(torch.randn(2, 3, 16, 16), 0).shape == (2, 3)


def test_sharding_is_exact_when_bn_is_shard_independent(backbone: Path, tmp_path: Path) -> None:
    """With BatchNorm on its running statistics (identical on every rank), nothing depends on
    how the batch is split: 2 ranks give 1 rank's scores and weights up to float summation
    order, the same masks, and the two ranks agree bitwise. This pins the sharding, the
    augmentation, the loss weighting, the gradient averaging (switch scores included) and the
    dual multipliers."""
    config = write_config(bap_config(backbone, epochs=4, score_lr=0.05, dual_lr=2.0), tmp_path)
    probe = ["-m", "tests.training.ddp_probe", str(config), str(tmp_path)]
    run([sys.executable, *probe], tmp_path / "one.log")
    run([*TORCHRUN, *probe], tmp_path / "two.log")
    one, rank0, rank1 = (
        load_file(str(tmp_path / f"world{w}-rank{r}.safetensors"))
        for w, r in ((1, 0), (2, 0), (2, 1))
    )
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(not bool((v > 0).all()) for k, v in one.items() if k.startswith("scores."))
    for key, value in one.items():
        torch.testing.assert_close(rank0[key], value, rtol=0, atol=1e-5, msg=key)
        if key.startswith("scores."):
            assert torch.equal(rank0[key] > 0, value > 0), key


def test_killed_worker_restarts_from_the_checkpoint(backbone: Path, tmp_path: Path) -> None:
    """SIGKILL one worker mid-stage-2; torchrun (--max-restarts=1) restarts both, and they pick
    up this launch's checkpoint instead of starting over, then publish."""
    config = write_config(bap_config(backbone, epochs=12), tmp_path)
    args = [*TORCHRUN, "--max-restarts=1", *train_args(config, tmp_path)]
    with launched(args, tmp_path / "torchrun.log") as proc:
        wait_for(lambda: in_bap_stage(tmp_path / "run"), proc, "a stage-2 checkpoint")
        os.kill(worker(proc.pid, rank=1), signal.SIGKILL)
        proc.wait(timeout=RUN_TIMEOUT)
    out = (tmp_path / "torchrun.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "torchrun restart 1: resuming" in out
    phase, step = RESUMED.search(out).groups()  # type: ignore[union-attr]
    assert phase == "bap" and int(step) > 0
    manifest, _ = load_version(tmp_path / "store", json.loads(config.read_text())["name"])
    assert all(d.cost_fraction <= manifest.budget for d in manifest.domains.values())


def test_two_rank_checkpoint_resumes_on_one_rank(backbone: Path, tmp_path: Path) -> None:
    """The checkpoint holds no per-rank state: stop a 2-rank run mid-stage-2, finish it alone."""
    config = write_config(bap_config(backbone, epochs=12), tmp_path)
    with launched([*TORCHRUN, *train_args(config, tmp_path)], tmp_path / "two.log") as proc:
        wait_for(lambda: in_bap_stage(tmp_path / "run"), proc, "a stage-2 checkpoint")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert not (tmp_path / "store").exists()  # it really stopped before publishing
    out = run([sys.executable, *train_args(config, tmp_path, "--resume")], tmp_path / "one.log")
    phase, step = RESUMED.search(out).groups()  # type: ignore[union-attr]
    assert phase == "bap" and int(step) > 0
    assert "rank=" not in out  # one plain process, no process group
    manifest, _ = load_version(tmp_path / "store", json.loads(config.read_text())["name"])
    assert all(d.cost_fraction <= manifest.budget for d in manifest.domains.values())
