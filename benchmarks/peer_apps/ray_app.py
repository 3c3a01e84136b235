"""Ray Serve as its docs write a batched deployment: two replicas, `@serve.batch` (up to 16,
2 ms wait), `max_ongoing_requests` raised so a replica holds enough requests to batch (its
default of 5 caps every batch at 5). The raw image body is read from the Starlette request.
Ray's dashboard is off (a user serving one model on a small box would turn it off too). Run:
`python ray_app.py PORT`.
"""

from __future__ import annotations

import signal
import sys
import threading

import numpy as np
import ray
from model import preprocess, session, softmax, top5
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=2, max_ongoing_requests=64)
class Fashion:
    def __init__(self) -> None:
        self.session = session()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def classify(self, images: list[bytes]) -> list[dict[str, object]]:
        x = np.stack([preprocess(b) for b in images])
        probs = softmax(self.session.run(None, {"x": x})[0])
        return [{"predictions": top5(p)} for p in probs]

    async def __call__(self, request: Request) -> dict[str, object]:
        return await self.classify(await request.body())


if __name__ == "__main__":
    ray.init(include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Fashion.bind(), route_prefix="/classify")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
