"""The comparison apps of the HTTP benchmark: what a plain FastAPI service would be.

`POST /classify` reads the body, then in FastAPI's threadpool decodes it with model_store's own
preprocessing and runs one torch forward of the same pruned domain view the server has (no
batching, no queue, no metrics); `POST /body` only reads the body. Run by `http_bench` under
uvicorn with BENCH_STORE, BENCH_MODEL and BENCH_DOMAIN set.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from model_store import domain_view, load_version, preprocess_bytes

manifest, network = load_version(Path(os.environ["BENCH_STORE"]), os.environ["BENCH_MODEL"])
DOMAIN = manifest.spec.domain_names.index(os.environ["BENCH_DOMAIN"])
VIEW = domain_view(network, DOMAIN).eval()
PRE = manifest.spec.domains[DOMAIN].preprocess
LABELS = manifest.spec.domains[DOMAIN].labels
app = FastAPI()


def _classify(data: bytes) -> list[dict[str, object]]:
    x = torch.from_numpy(preprocess_bytes(data, PRE, 40_000_000))[None]
    with torch.inference_mode():
        probs = VIEW(x, 0)[0].softmax(-1)
    top = probs.topk(min(5, len(LABELS)))
    return [
        {"label": LABELS[i], "score": float(s)}
        for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/classify")
async def classify(request: Request) -> dict[str, object]:
    return {"predictions": await run_in_threadpool(_classify, await request.body())}


@app.post("/body")
async def body(request: Request) -> dict[str, int]:
    return {"bytes": len(await request.body())}
