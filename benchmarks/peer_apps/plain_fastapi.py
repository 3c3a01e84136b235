"""The plain FastAPI + ONNX Runtime app a user writes from FastAPI's tutorial: a sync `def`
endpoint (FastAPI runs it in its threadpool), the raw image body as `bytes`, one forward per
request, no batching. Run with `uvicorn plain_fastapi:app [--workers 2]`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, FastAPI
from model import preprocess, session, softmax, top5

SESSION = session()
app = FastAPI()


@app.post("/classify")
def classify(image: Annotated[bytes, Body(media_type="image/png")]) -> dict[str, object]:
    logits = SESSION.run(None, {"x": preprocess(image)[None]})[0]
    return {"predictions": top5(softmax(logits[0]))}
