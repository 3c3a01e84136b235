"""The plain FastAPI + ONNX Runtime app a user writes from FastAPI's tutorial: a sync `def`
endpoint (FastAPI runs it in its threadpool), the raw image body as `bytes`, one forward per
request, no batching; one session per model it serves (POST /classify/{model}). Run with
`uvicorn plain_fastapi:app [--workers 2]`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, FastAPI, HTTPException
from model import GRAPHS, preprocess, session, softmax, top5

SESSIONS = {name: session(path) for name, path in GRAPHS.items()}
app = FastAPI()


@app.post("/classify/{model}")
def classify(
    model: str, image: Annotated[bytes, Body(media_type="image/png")]
) -> dict[str, object]:
    if model not in SESSIONS:
        raise HTTPException(404, f"no model {model!r}")
    logits = SESSIONS[model].run(None, {"x": preprocess(image)[None]})[0]
    return {"predictions": top5(softmax(logits[0]))}
