"""Distributed plumbing for the trainer: process group, device, precision, shards, elastic restarts.

One process (`python -m training train`) and N processes (`torchrun --nproc_per_node=N -m
training train`) run the same trainer. torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with
WORLD_SIZE > 1 the trained modules are wrapped in DistributedDataParallel (NCCL on CUDA, gloo on
CPU), which averages their gradients. Everything else stays replicated by construction: every
rank draws the same global batch and the same augmentation, takes its own slice of the rows, and
steps identical parameters with identical averaged gradients, so the switch scores, BN affines,
heads and the dual multipliers (a function of the scores) agree bitwise on every rank.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from model_store import DomainBatchNorm

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAUNCH_MARK = "launch-id"  # which torchrun launch started the run in this folder


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; `Ranks()` is a plain single-process run on the CPU."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, evaluates and publishes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def rows(self, n: int) -> slice:
        """This rank's contiguous slice of a global batch of n rows (sizes differ by at most 1)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def shard_weight(self, n: int) -> float:
        """Factor on this shard's mean loss so that DDP's average over ranks is the global mean
        (exactly 1.0 when n divides evenly)."""
        rows = self.rows(n)
        return self.world * (rows.stop - rows.start) / n

    def to_device(self, t: Tensor) -> Tensor:
        """Host batch to the device; pinned memory lets the copy overlap compute on CUDA."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def replicate(self, model: nn.Module, *others: nn.Module) -> nn.Module:
        """The model to call in training: itself alone, or wrapped with the other trained
        modules (the switches) in one DDP so that all their gradients are averaged.

        Buffers are not broadcast each forward: per-domain BN running statistics stay per rank
        and are averaged by `average_buffers` at every checkpoint instead.
        """
        if not self.distributed:
            return model
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(_Replicated(model, *others), device_ids=ids, **_NO_SYNC)

    def sync_batch_norm(self, model: nn.Module) -> None:
        """Make every per-domain BN normalise with its global batch's statistics in training.

        torch's SyncBatchNorm conversion does not apply (ours keeps one row per domain), so
        each DomainBatchNorm becomes a `_SyncDomainBatchNorm` in place: same parameters, same
        buffers, same state-dict keys, same eval-mode forward.
        """
        if self.distributed:
            for module in model.modules():
                if type(module) is DomainBatchNorm:
                    module.__class__ = _SyncDomainBatchNorm

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating buffers (BN running statistics) over ranks so every rank agrees.

        Running means are a linear average of batch means, so this gives exactly the running
        mean of the global batches; running variances are the mean of shard variances, which
        leaves out the spread of the shard means (of order variance / shard size).
        """
        if not self.distributed:
            return
        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(self.world)

    def check_in_sync(self, tensors: Iterable[Tensor]) -> None:
        """Fail loudly if the replicas have drifted apart (they must agree bitwise)."""
        if not self.distributed:
            return
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors]).to(self.device)
        low, high = flat.clone(), flat.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(
                f"rank {self.rank}: replicas differ by {float((high - low).max()):g}; "
                "a non-deterministic op or a rank-dependent branch broke data parallelism"
            )

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


# torch 2.13 renamed DDP's broadcast_buffers to forward_sync_buffers (the old name warns)
_NO_SYNC = {
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else "broadcast_buffers": False
}


class _Replicated(nn.Module):
    """The model plus other trained modules, so DDP sees (and averages) all their parameters.
    Forward is the model's; the others are used through their own methods."""

    def __init__(self, model: nn.Module, *others: nn.Module):
        super().__init__()
        self.model, self.others = model, nn.ModuleList(others)

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003 - the model's own signature
        return self.model(*args, **kwargs)


class _SyncDomainBatchNorm(DomainBatchNorm):
    """Training-mode BN over the rows of all ranks: per-channel sums, squared sums and the row
    count are summed over ranks by a differentiable all-reduce (its backward sums the gradients
    over ranks, as SyncBatchNorm's does), so 1 and N ranks normalise alike."""

    def forward(self, x: Tensor, domain: int) -> Tensor:
        if not self.training:
            return super().forward(x, domain)
        channels = x.shape[1]
        count = x.new_full((1,), x.numel() / channels, dtype=torch.float32)
        xf = x.float()  # statistics in fp32 also under autocast
        local = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        total = dist_autograd.all_reduce(local, op=dist.ReduceOp.SUM)
        n = total[-1]
        mean = total[:channels] / n
        var = total[channels : 2 * channels] / n - mean * mean  # biased, as BN normalises
        with torch.no_grad():  # running statistics as F.batch_norm keeps them (unbiased var)
            self.running_mean[domain].lerp_(mean, self.momentum)
            self.running_var[domain].lerp_(var * n / (n - 1), self.momentum)
        scale = self.weight[domain] * torch.rsqrt(var + self.eps)
        shift = self.bias[domain] - mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: this rank's GPU when CUDA is available, else the CPU."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda, but this torch sees no CUDA GPU; use --device cpu")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs on this node; "
            "give torchrun --nproc_per_node <= the GPU count"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(device: str = "auto") -> Ranks:
    """Join the process group that torchrun describes in the environment (if any)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    ranks = Ranks(rank, world, local_rank, pick_device(device, local_rank))
    if ranks.distributed and not dist.is_initialized():
        cuda = ranks.device.type == "cuda"
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            device_id=ranks.device if cuda else None,
            **_this_attempts_store(rank, world),
        )
        log.info(
            "rank=%d of %d local_rank=%d device=%s backend=%s",
            rank,
            world,
            local_rank,
            ranks.device,
            dist.get_backend(),
        )
    return ranks


def _this_attempts_store(rank: int, world: int) -> dict[str, object]:
    """torchrun's c10d rendezvous shares one TCPStore across restarts without a per-attempt
    prefix, so a restarted gloo/NCCL group can read the dead workers' addresses and fail to
    connect (pytorch/pytorch#135712). Give each attempt its own key space in that store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}  # env:// as usual (torchrun hosts a fresh store per attempt, or no torchrun)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {
        "store": dist.PrefixStore(f"bap/attempt-{attempt}", store),
        "rank": rank,
        "world_size": world,
    }


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed precision for forward and loss; fp32 runs as is."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its range underflows small gradients); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


# ---- torchrun elastic restarts --------------------------------------------------------------
def _launch_id() -> str | None:
    """torchrun's rendezvous id: a fresh uuid under --standalone, the job id given as --rdzv-id
    on several nodes; None outside torchrun or when it is the non-unique default."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    return None if run_id in (None, "", "none") else run_id


def mark_launch(run_dir: Path) -> None:
    """Record which launch started this run, so its own restarted workers may resume it."""
    run_id = _launch_id()
    if run_id is not None:
        (run_dir / LAUNCH_MARK).write_text(run_id + "\n")


def restarted_launch(run_dir: Path) -> bool:
    """True in a worker that torchrun restarted (--max-restarts) after a failure, when the run
    in run_dir was started by this same launch. A checkpoint left by any other run is never
    picked up silently: that still needs --resume."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if restarts == 0:
        return False
    mark, run_id = run_dir / LAUNCH_MARK, _launch_id()
    if run_id is None:
        log.warning(
            "restart %d without a unique rendezvous id: not resuming automatically; launch "
            "torchrun with --standalone or --rdzv-id=JOB_ID, or pass --resume",
            restarts,
        )
        return False
    ours = mark.is_file() and mark.read_text().strip() == run_id
    if ours:
        log.warning("torchrun restart %d: resuming %s from its last checkpoint", restarts, run_dir)
    return ours
