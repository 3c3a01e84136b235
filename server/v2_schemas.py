"""Response bodies of the Open Inference Protocol's metadata and health endpoints (KServe v2
REST: server metadata, server live/ready, model metadata, model ready, and its error object).
The infer bodies are tensors, written by v2_wire.py."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="protocol extensions this server implements")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BYTES or FP32")
    shape: list[int] = Field(description="-1: any size (the batch)")


class ModelMetadata(BaseModel):
    name: str = Field(description="the domain")
    versions: list[str] = Field(description="the store's version this server serves")
    platform: str = Field(description="bap_ and the runtime that runs the batches")
    inputs: list[TensorMetadata] = Field(description="a request sends exactly one of them")
    outputs: list[TensorMetadata]


class ProtocolError(BaseModel):
    error: str = Field(description="what was wrong and what is accepted")
