"""`[OMP_WAIT_POLICY=PASSIVE] python -m experiments.threads_probe [threads]`: one network, one
thread count, batch 1/8/32, wall and CPU time per forward.

OpenMP's wait policy is read once, when the process starts, so it cannot be a lever inside one
run; this probe is run once per setting instead. With another OpenMP process busy on the box,
the default (active) policy spins: CPU time per call equals wall time and both balloon.
"""

from __future__ import annotations

import os
import sys
from functools import partial

import torch

from benchmarks.common import time_calls
from benchmarks.report import table
from benchmarks.workloads import HEADLINE

from .levers import OneDomain, served_network


def main(argv: list[str]) -> None:
    threads = int(argv[0]) if argv else torch.get_num_threads()
    torch.set_num_threads(threads)
    model = OneDomain(served_network(HEADLINE))
    rows = []
    with torch.inference_mode():
        for batch in (1, 8, 32):
            x = torch.randn(batch, 3, HEADLINE.input_size, HEADLINE.input_size)
            [t] = time_calls([partial(model, x)], 3.0)
            rows.append(
                [
                    threads,
                    os.environ.get("OMP_WAIT_POLICY", "(unset)"),
                    batch,
                    t.median * 1e3,
                    t.cpu * 1e3,
                    os.getloadavg()[0],
                ]
            )
    header = ["threads", "OMP_WAIT_POLICY", "batch", "ms", "CPU ms", "load average"]
    print(table(header, rows))  # noqa: T201 - the probe's result


if __name__ == "__main__":
    main(sys.argv[1:])
