"""LitServe as its docs write it: a LitAPI with setup / decode_request / batch / predict /
unbatch / encode_response, batches of up to 16 with a 2 ms wait, one CPU worker. The raw image
body reaches decode_request as `bytes` through FastAPI's `Body()`: LitServe builds the route's
request type from decode_request's annotation, so this file has no `from __future__ import
annotations` (a string annotation made every request a 422). Run: `python litserve_app.py PORT`.
"""

import sys
from typing import Annotated

import litserve as ls
import numpy as np
from fastapi import Body
from model import preprocess, session, softmax, top5


class FashionAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.session = session()

    def decode_request(self, request: Annotated[bytes, Body(media_type="image/png")]) -> np.ndarray:
        return preprocess(request)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.session.run(None, {"x": x})[0])

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, object]:
        return {"predictions": top5(output)}


if __name__ == "__main__":
    api = FashionAPI(max_batch_size=16, batch_timeout=0.002, api_path="/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False)
