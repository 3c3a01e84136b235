"""Data-parallel training under torchrun on the CPU (gloo): 2 ranks match 1, a killed worker is
restarted from the checkpoint, and a 2-rank checkpoint resumes in 1 process.

Every run starts from one small pretrained backbone (stage 1 done once, in the fixture) so that
the BAP stage being compared is not dominated by how a from-scratch pretraining happened to go.
"""

from __future__ import annotations

import json
import math
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

from model_store import load_version
from tests.training.conftest import TINY_DOMAINS, tiny_config
from training import distributed
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.config import TrainConfig
from training.data import AUGMENTS, build, train_work
from training.evaluate import accuracy
from training.losses import run_length_scale
from training.publish import publish_result
from training.sources import load_domain
from training.trainer import PRETRAINED, train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not Path("/proc/self/status").is_file(),
        reason="needs torch.distributed (gloo) and Linux /proc",
    ),
]
ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
RUN_TIMEOUT = 150  # seconds for one torchrun; a tiny run takes ~15 s on 2 busy cores
RESUMED = re.compile(r"resumed run_dir=\S+ phase=(\w+) step=(\d+)")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1 only (every weight, all domains), published unpruned: the shared start."""
    root = tmp_path_factory.mktemp("backbone")
    config = tiny_config(epochs=0, budget=1.0)
    publish_result(config, train(config, root / "run", progress=False), root / "store", force=True)
    return root / "store" / config.name / "v1"


def bap_config(backbone: Path, **changes) -> TrainConfig:
    """Stage 2 from the backbone, 32 images per domain per rank (a global batch of 64).

    The multipliers take an effective step of 1.0 whatever the run's length (the tolerances
    below were measured so): dual_lr is divided by the scale short runs get."""
    domains = [dict(d, train_size=192) for d in TINY_DOMAINS]
    epochs = changes.pop("epochs", 8)
    steps = math.ceil(epochs * 192 / 64)
    return tiny_config(
        domains=domains,
        backbone=str(backbone),
        batch_size=64,
        budget=0.75,
        budget_control="dual",
        score_lr=0.02,
        epochs=epochs,
        dual_lr=1.0 / run_length_scale(steps),
        score_momentum=0.9,  # what these runs trained with before the field was honoured
        # stage 2 alone unless a test asks for more (see test_every_stage_under_ddp_...)
        **{"pretrain_epochs": 0, "recovery_epochs": 0.0, "bn_recalibration_batches": 0, **changes},
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
        "--force",  # these runs prove rank equivalence; they are too short to reach the budget
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


def train_both(config: TrainConfig, tmp_path: Path) -> tuple[Path, Path]:
    """The same config, seed and global batch on 1 process and on 2 torchrun ranks; both
    publish. Returns the two folders (run/ and store/ in each)."""
    one, two = tmp_path / "one", tmp_path / "two"
    publish_result(config, train(config, one / "run", progress=False), one / "store", force=True)
    out = run([*TORCHRUN, *train_args(write_config(config, two), two)], tmp_path / "two.log")
    assert "rank=1 of 2" in out and "backend=gloo" in out
    return one, two


def trained(folder: Path) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Final switch masks and the masked network's test accuracy, from the last checkpoint
    (before export, whose budget guarantee may switch more filters off)."""
    result = train(None, folder / "run", resume=True, progress=False)  # phase done
    masks = [s > 0 for s in result.scores]
    return masks, {d.name: accuracy(result.model, d, 256) for d in result.data}


def test_two_ranks_match_one(backbone: Path, tmp_path: Path) -> None:
    """Per-rank BatchNorm (the default): the same masks and accuracies, up to a tolerance.

    Not bitwise, because with 2 ranks each BN normalises with the statistics of its own 32
    images of a domain instead of all 64 (the batch statistics are part of the forward pass,
    and DDP only averages gradients), so activations, gradients and the trajectory differ
    slightly. The running statistics are re-estimated under the final masks (the same seeded
    batches on every rank), as every real run does; without that, the rank-averaged running
    variances left out the spread between shard means and cost up to 25 points on this tiny
    network. Measured on this config over seeds 0-2 (channels-last training): 98.2-99.1% of
    the switches agree and the trained networks' accuracies differ by at most one test image
    (48 per domain, 2.1 points). We allow 95% and 5 points. The published accuracies are not
    compared: these runs are too short to reach the budget, so the export's blind cut decides
    them, and near-tied scores swap (4-46 points at seeds 0-2); their costs are compared.
    That nothing but BN statistics differs is shown exactly by
    `test_sync_bn_two_ranks_equal_one`.
    """
    config = bap_config(backbone, bn_recalibration_batches=4)
    one, two = train_both(config, tmp_path)
    manifest_one, _ = load_version(one / "store", config.name)
    manifest_two, model_two = load_version(two / "store", config.name)  # a valid version
    (masks_one, acc_one), (masks_two, acc_two) = trained(one), trained(two)
    agree = sum(int((a == b).sum()) for a, b in zip(masks_one, masks_two, strict=True))
    assert agree / sum(m.numel() for m in masks_one) >= 0.95
    assert not all(bool(m.all()) for m in masks_one)  # training itself switched filters off
    for name, figures in manifest_one.domains.items():
        assert abs(acc_one[name] - acc_two[name]) <= 0.05, name
        theirs = manifest_two.domains[name]
        assert abs(figures.cost_fraction - theirs.cost_fraction) <= 0.01, name
        assert theirs.cost_fraction <= config.budget
    with torch.no_grad():
        assert model_two(torch.randn(2, 3, 16, 16), 0).shape == (2, 3)


def test_sync_bn_two_ranks_equal_one(backbone: Path, tmp_path: Path) -> None:
    """With sync_bn every BN normalises with the global batch's statistics, so nothing depends
    on how the batch is cut into shards: 2 ranks end with 1 rank's scores up to float summation
    order, the same masks, and the same published accuracies and costs. This pins the
    sharding, the augmentation, the loss weighting, the gradient averaging (switch scores
    included) and the dual multipliers. The 2 ranks themselves agree bitwise: every checkpoint
    checks it (`Ranks.check_in_sync`) and the run would have failed otherwise."""
    config = bap_config(backbone, sync_bn=True)
    one, two = train_both(config, tmp_path)
    scores = [load_checkpoint(f / "run")[0]["switches"] for f in (one, two)]  # type: ignore[index]
    for key, value in scores[0].items():
        torch.testing.assert_close(scores[1][key], value, rtol=0, atol=1e-5, msg=key)
        assert torch.equal(scores[1][key] > 0, value > 0), key
    manifest_one, _ = load_version(one / "store", config.name)
    manifest_two, _ = load_version(two / "store", config.name)
    for name, figures in manifest_one.domains.items():
        assert figures.accuracy == manifest_two.domains[name].accuracy, name
        assert figures.cost_fraction == manifest_two.domains[name].cost_fraction, name


def test_every_stage_under_ddp_matches_one_process(backbone: Path, tmp_path: Path) -> None:
    """The path the README recommends, whole: stage 1 (every weight, DDP over the shared
    convs), stage 2, recovery, distillation from the kept stage-1 network and BN
    re-estimation, on 2 ranks with sync_bn, end where one process ends: the same masks and the
    published outputs up to float summation order, which two epochs of stage-1 SGD compound
    (logits differ by up to 0.012 here; we allow 0.05)."""
    config = bap_config(
        backbone,
        sync_bn=True,
        pretrain_epochs=2,
        recovery_epochs=2,
        distill_weight=0.5,
        bn_recalibration_batches=2,
    )
    one, two = train_both(config, tmp_path)
    (masks_one, acc_one), (masks_two, acc_two) = trained(one), trained(two)
    assert all(torch.equal(a, b) for a, b in zip(masks_one, masks_two, strict=True))
    assert acc_one == acc_two
    models = [load_version(f / "store", config.name)[1] for f in (one, two)]
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for d in range(len(config.domains)):
            torch.testing.assert_close(models[1](x, d), models[0](x, d), rtol=0, atol=0.05)
    assert (two / "run" / PRETRAINED).is_file()


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


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_slices_rebuild_the_single_process_batch(world: int) -> None:
    """Each rank's rows, augmented with the global draws (either transform), are exactly the
    single-process rows, and the loss weights make the average of the shard means the global
    mean."""
    data = load_domain(TINY_DOMAINS[0], 18, 16)
    idx = torch.randperm(len(data.train))[:30]

    def rows(augment: str, part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        return build(
            data, train_work(data, 0, idx, torch.Generator().manual_seed(5), augment, part)
        )

    ranks = [distributed.Ranks(r, world) for r in range(world)]
    for augment in AUGMENTS:
        whole, targets = rows(augment)
        parts = [rows(augment, r.rows(30)) for r in ranks]
        assert torch.equal(torch.cat([x for x, _ in parts]), whole)
        assert torch.equal(torch.cat([y for _, y in parts]), targets)
    losses = torch.rand(30)
    shard_means = [losses[r.rows(30)].mean() * r.shard_weight(30) for r in ranks]
    torch.testing.assert_close(sum(shard_means) / world, losses.mean())


def test_restart_resumes_only_its_own_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted worker resumes the folder only when this launch's id is recorded in it."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    distributed.mark_launch(tmp_path)
    assert not distributed.restarted_launch(tmp_path)  # a first attempt never auto-resumes
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert distributed.restarted_launch(tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-b")  # an older run's folder
    assert not distributed.restarted_launch(tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default: not unique
    assert not distributed.restarted_launch(tmp_path)
