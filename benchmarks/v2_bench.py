"""What the Open Inference Protocol path costs beside /classify: one server, one image, wrk.

`python -m benchmarks.v2_bench [--seconds S] [--rounds R] [--clients C]`. One `python -m server`
on the bundled model; wrk posts the same Fashion-MNIST PNG to the fashion domain three ways:
POST /classify with the raw PNG (the fast path), POST /v2/models/fashion/infer with the image
as a base64 BYTES element in JSON (the v2 JSON path), and the same with the binary tensor
extension. The three alternate for R rounds so a neighbour's load on the shared box falls on
all of them alike; each figure is the median of its rounds, req/s and the server's CPU time
per request (steadier on a busy box). Writes results/v2.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import statistics
import struct
import tempfile
from pathlib import Path
from typing import Any

from .common import RESULTS, cpu_seconds, machine, write_result
from .http_bench import fashion_png
from .process import serve
from .wrk import run_wrk

log = logging.getLogger("benchmarks.v2")
STORE = Path(__file__).resolve().parents[1] / "model_store" / "bundled"
MODEL, DOMAIN = "embedded", "fashion"


def requests(image: bytes) -> dict[str, tuple[str, bytes, str, dict[str, str]]]:
    """name -> (path, body, content type, other headers) for the same image."""
    top5 = [{"name": "probabilities", "parameters": {"classification": 5}}]
    data = [base64.b64encode(image).decode()]
    as_json = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": data}],
        "outputs": top5,
    }
    raw = struct.pack("<I", len(image)) + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}],
        }
    ).encode()
    infer = f"/v2/models/{DOMAIN}/infer"
    return {
        "classify": (f"/classify?domain={DOMAIN}&top_k=5", image, "image/png", {}),
        "v2 JSON": (infer, json.dumps(as_json).encode(), "application/json", {}),
        "v2 binary": (
            infer,
            header + raw,
            "application/octet-stream",
            {"Inference-Header-Content-Length": str(len(header))},
        ),
    }


def measure(seconds: float, rounds: int, clients: int) -> dict[str, Any]:
    image, described = fashion_png()
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp, serve(STORE, MODEL, Path(tmp)) as server:
        for path, body, media, headers in requests(image).values():  # warm-up
            run_wrk(server.url + path, body, media, clients, 2, headers)
        for _ in range(rounds):
            for name, (path, body, media, headers) in requests(image).items():
                cpu = cpu_seconds(server.pid)
                row = run_wrk(server.url + path, body, media, clients, seconds, headers)
                served = row["req_per_s"] * seconds
                row["server_cpu_ms_per_request"] = (cpu_seconds(server.pid) - cpu) * 1e3 / served
                log.info("%s %s", name, row)
                if row["non_2xx"] or row["socket_errors"]:  # a rate of errors measures nothing
                    raise RuntimeError(f"{name}: failed requests under load: {row}")
                runs.setdefault(name, []).append(row)

    def median(key: str) -> dict[str, float]:
        return {name: statistics.median(r[key] for r in rows) for name, rows in runs.items()}

    rate, cpu = median("req_per_s"), median("server_cpu_ms_per_request")
    return {
        "image": described,
        "req_per_s": rate,
        "ratio_to_classify": {n: round(v / rate["classify"], 3) for n, v in rate.items()},
        "server_cpu_ms_per_request": cpu,
        # CPU per request, /classify's over each one's: the req/s ratio a box to itself would
        # see when the server is CPU-bound; steadier than req/s beside other work
        "cpu_ratio_to_classify": {n: round(cpu["classify"] / v, 3) for n, v in cpu.items()},
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the three bodies")
    parser.add_argument("--clients", type=int, default=32, help="wrk connections")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = vars(args) | {"store": STORE, "model": MODEL, "domain": DOMAIN}
    settings["_machine"] = machine()
    figures = measure(args.seconds, args.rounds, args.clients)
    write_result("v2", settings, figures, RESULTS)
    log.info("req/s %s; ratio to /classify %s", figures["req_per_s"], figures["ratio_to_classify"])
    log.info("CPU ratio to /classify %s", figures["cpu_ratio_to_classify"])


if __name__ == "__main__":
    main()
