"""What every suite shares: timing, memory readings, machine facts, the results file."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median is the figure; min and reps say how stable it was.
    `cpu` is the median CPU time per call (all threads): waiting for a core is not in it."""

    median: float
    min: float
    reps: int
    cpu: float


def time_calls(
    fns: Sequence[Callable[[], object]], budget_s: float, warmup: int = 2, min_reps: int = 3
) -> list[Timing]:
    """Median wall time of each of `fns`, timed in interleaved rounds (one call of each per
    round) until `budget_s` is spent and every one ran `min_reps` times.

    Interleaving is what makes ratios trustworthy on a shared machine: a burst of someone
    else's load slows every case of a round alike instead of one case's whole series. On a
    machine so busy that rounds crawl, timing stops at 3 x `budget_s` (after one round at
    least), so the run stays bounded; `reps` in the result says how many rounds there were.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while True:
        for fn, series, cpu_series in zip(fns, samples, cpu, strict=True):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            series.append(time.perf_counter() - t0)
            cpu_series.append(time.process_time() - c0)
        elapsed, reps = time.perf_counter() - start, len(samples[0])
        if (reps >= min_reps and elapsed >= budget_s) or elapsed >= 3 * budget_s:
            break
    return [
        Timing(statistics.median(s), min(s), len(s), statistics.median(c))
        for s, c in zip(samples, cpu, strict=True)
    ]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` intra-op threads (None: leave the count alone)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _status_kib(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now (Linux /proc)."""
    return _status_kib("VmRSS", pid) * 1024


def process_memory(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private pages) of a process, in bytes, from /proc/<pid>/smaps_rollup.

    RSS counts shared library pages (torch) in full for every process; PSS splits them among
    the processes mapping them; USS is what the process alone adds, the cost of one more.
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_delta(fn: Callable[[], object]) -> int:
    """Bytes the resident set grew to above its level before `fn` (activations, workspace).

    Resets the kernel's high-water mark first (write 5 to clear_refs). Large tensors are
    mmapped and returned on free, so the peak is seen even though RSS drops back afterwards.
    """
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_bytes()
    fn()
    return max(0, _status_kib("VmHWM") * 1024 - before)


def git_commit() -> str:
    """HEAD, with "+dirty" when tracked files differ (others edit this checkout too)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where and when the figures were measured, including how busy the machine was."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "commit": git_commit(),
        "utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
    }


def write_result(name: str, settings: dict[str, Any], figures: dict[str, Any], out: Path) -> Path:
    """`<out>/<name>.json`: machine (load at the start and at the end), settings, figures."""
    started = settings.pop("_machine")
    ended = machine()
    data = {
        "suite": name,
        "machine": started | {"load_average_end": ended["load_average"]},
        "settings": settings,
        "figures": figures,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    log.info("wrote %s", path)
    return path


def _jsonable(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value.relative_to(ROOT) if value.is_relative_to(ROOT) else value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
