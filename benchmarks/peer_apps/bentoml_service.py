"""BentoML as its docs write a service: `@bentoml.service` with an adaptive-batching API
(`batchable=True`, up to 16 images; max_latency_ms 1000 as in BentoML's adaptive-batching
example: with 10 ms its dispatcher answered 503 to most requests at 32 clients on this box).
BentoML takes a file as a multipart part (it has no raw image body), so clients send the PNG as
the `images` part. Run:
`bentoml serve bentoml_service:Fashion --port PORT`.
"""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
from model import preprocess, session, softmax, top5


@bentoml.service(workers=1)
class Fashion:
    def __init__(self) -> None:
        self.session = session()

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=1000)
    def classify(self, images: list[Path]) -> list[dict[str, object]]:
        x = np.stack([preprocess(p.read_bytes()) for p in images])
        probs = softmax(self.session.run(None, {"x": x})[0])
        return [{"predictions": top5(p)} for p in probs]
