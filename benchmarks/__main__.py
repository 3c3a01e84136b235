"""`python -m benchmarks [model|server|memory|http|resnet50|peers|all] [--quick]`: run, write
JSON, make the doc.

Full settings are sized so that `all` finishes in under 10 minutes on 2 busy cores; `--quick`
runs every code path on a tiny network in seconds (the smoke test uses it).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import (
    http_bench,
    memory_bench,
    model_bench,
    peer_envs,
    peers_bench,
    peers_resnet50,
    report,
    resnet50_bench,
    server_bench,
)
from .common import DOC, RESULTS, ROOT, machine, write_result
from .workloads import BUNDLED, HEADLINE, Shape

log = logging.getLogger("benchmarks")
TINY = Shape(16, 0.25)
BUNDLED_STORE = ROOT / "model_store" / "bundled"  # what `make embedded` publishes


def model_settings(quick: bool) -> model_bench.Settings:
    if quick:
        return model_bench.Settings(
            (TINY,), (1, 4), (0.5,), 0.01, warmup=1, min_reps=2, bundled=(BUNDLED_STORE, "embedded")
        )
    return model_bench.Settings(
        (HEADLINE, BUNDLED), (1, 8, 32), (0.75, 0.5, 0.25), 0.4, bundled=(BUNDLED_STORE, "embedded")
    )


def server_settings(quick: bool) -> server_bench.Settings:
    if quick:
        return server_bench.Settings((1, 4), (4,), 0.5, 0.1, 200, 0.02, shape=TINY)
    return server_bench.Settings((1, 4, 16, 64), (4, 16, 64), 3.0, 1.0, 5000, 0.3)


def peers_settings(quick: bool, install: bool, cache: Path) -> peers_bench.Settings:
    """Full: 3 interleaved rounds of 6 s per client count (~10 minutes with every peer)."""
    peers = peers_bench.Settings(BUNDLED_STORE, "embedded", "fashion", install=install, cache=cache)
    if quick:  # the 2-worker app is the same code as the 1-process one: left out here
        others = tuple(p for p in peers.peers if p != peers_bench.PLAIN_X2)
        return replace(peers, peers=others, clients=(1, 2), rounds=1, seconds=1.0, warmup_s=0.0)
    return peers


def suites(
    quick: bool,
    threads: int | None,
    install: bool = True,
    peers_cache: Path = peer_envs.DEFAULT_CACHE,
) -> dict[str, list[tuple[str, Callable[[], dict[str, Any]], object]]]:
    """suite -> [(result name, measure, settings)]; settings go into the JSON as they are."""
    m, s = model_settings(quick), replace(server_settings(quick), torch_threads=threads)
    mem = memory_bench.Settings(16, shape=TINY, domains=2) if quick else memory_bench.Settings(64)
    web = http_bench.Settings(BUNDLED_STORE, "embedded", "fashion")
    peers = peers_settings(quick, install, peers_cache)
    peers50 = peers_resnet50.Settings(install=install, cache=peers_cache)
    if quick:
        peers50 = replace(
            peers50, shape=Shape(32, 0.125, "resnet50"), domains=2, clients=2, seconds=1.0,
            warmup_s=0.0,
        )  # fmt: skip
    r50 = resnet50_bench.Settings()
    if quick:
        r50 = resnet50_bench.Settings(
            Shape(32, 0.125, "resnet50"), domains=2, batches=(1,), timing_seconds=0.05,
            clients=4, rounds=1, load_seconds=1.0, warmup_s=0.0, max_requests=40,
        )  # fmt: skip
    if quick:
        web = replace(web, clients=(1, 2), seconds=1.0, warmup_s=0.0, inprocess_seconds=0.05)
    return {
        "model": [("model", lambda: model_bench.measure(m), m)],
        "server": [("server", lambda: server_bench.measure(s), s)],
        "memory": [("memory", lambda: memory_bench.measure(mem), mem)],
        "http": [("http", lambda: http_bench.measure(web), web)],
        "resnet50": [("resnet50", lambda: resnet50_bench.measure(r50), r50)],
        "peers": [
            ("peers", lambda: peers_bench.measure(peers), peers),
            ("peers_resnet50", lambda: peers_resnet50.measure(peers50), peers50),
        ],
    }


def _settings_dict(settings: object) -> dict[str, Any]:
    return dict(settings) if isinstance(settings, dict) else dict(vars(settings))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "suite",
        nargs="?",
        default="all",
        choices=["model", "server", "memory", "http", "resnet50", "peers", "all"],
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="peers: skip a peer whose virtual environment is not made yet instead of making it",
    )
    parser.add_argument(
        "--peers-cache",
        type=Path,
        default=peer_envs.DEFAULT_CACHE,
        help="peers: folder of their virtual environments (outside the repo)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads, in-process and in the servers"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for <name>.json")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file to regenerate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = suites(args.quick, args.threads, not args.no_install, args.peers_cache)
    for suite in chosen if args.suite == "all" else [args.suite]:
        for name, run, settings in chosen[suite]:
            started = machine()
            log.info("%s: starting (load average %s)", name, started["load_average"])
            figures = run()
            write_result(name, _settings_dict(settings) | {"_machine": started}, figures, args.out)
    results = report.load(args.out)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(report.render(results))
    log.info("wrote %s", args.doc)
    print(report.targets_table(results))  # noqa: T201 - the run's one result on stdout


if __name__ == "__main__":
    main()
