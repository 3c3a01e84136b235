"""`python -m experiments.mixed_split [--resnet50]`: a batch spread evenly over four domains,
through the union graph (`domain_graphs` union) against one view call per domain (views), and
one domain's batch through its view, on one ONNX Runtime thread, interleaved.

Decided graph_set.py's rule: with every view loaded, a mixed batch runs view by view and the
union graph is not loaded. Results: `results/mixed_split.json`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.common import time_calls
from model_store import open_version, prune_to_union
from model_store.runtimes.onnx_runtime import OnnxGraphs

BUNDLED = Path(__file__).resolve().parent.parent / "model_store" / "bundled"
RESULTS = Path(__file__).resolve().parent / "results" / "mixed_split.json"


def probe(store: Path, model: str, batches: tuple[int, ...]) -> list[dict[str, float]]:
    stored = open_version(store, model)
    views, union = (OnnxGraphs(stored, 1, domain_graphs=g) for g in ("views", "union"))
    names, side = views.names, stored.manifest.spec.input_size
    rows = []
    for n in batches:
        x = np.random.default_rng(n).standard_normal((n, 3, side, side), dtype=np.float32)
        spread = np.arange(n, dtype=np.int64) % len(names)
        calls = [
            partial(union.run_mixed, spread, x),
            partial(views.run_mixed, spread, x),
            partial(views.run_domain, names[0], x),
        ]
        t_union, t_split, t_one = time_calls(calls, 3.0)
        rows.append(
            {
                "model": model,
                "batch": n,
                "union_ms": round(t_union.median * 1e3, 2),
                "split_ms": round(t_split.median * 1e3, 2),
                "one_domain_view_ms": round(t_one.median * 1e3, 2),
            }
        )
        print(rows[-1], flush=True)  # noqa: T201 - the probe's result
    return rows


def main(argv: list[str]) -> None:
    rows = probe(BUNDLED, "embedded", (2, 4, 8, 16))
    if "--resnet50" in argv:
        from benchmarks.resnet50_bench import RESNET50
        from benchmarks.workloads import masked_network, publish

        pruned = prune_to_union(masked_network(RESNET50, 4, 0.5, seed=11)).eval()
        with tempfile.TemporaryDirectory() as tmp:
            publish(Path(tmp), pruned, "resnet50", 0.5, graphs=True)
            rows += probe(Path(tmp), "resnet50", (4, 8, 16))
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
