"""Response and error bodies: what clients see, separate from the model's own objects."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str
    index: int = Field(description="class index in the domain's label list")
    score: float = Field(description="softmax probability")


class ClassifyResponse(BaseModel):
    domain: str
    model_version: str
    predictions: list[Prediction] = Field(description="top-k, best first")


class BatchItem(BaseModel):
    filename: str | None
    predictions: list[Prediction]


class BatchResponse(BaseModel):
    domain: str
    model_version: str
    results: list[BatchItem] = Field(description="one per `file` part, in order")


class DomainInfo(BaseModel):
    name: str
    labels: list[str]
    accuracy: float | None = Field(description="test accuracy measured at publish time (fp32)")
    accuracy_int8: float | None = Field(
        None, description="test accuracy through the int8 graphs, if the version has them"
    )
    accuracy_bf16: float | None = Field(
        None, description="test accuracy through OpenVINO in bf16, if measured (measure-bf16)"
    )
    parameters: int = Field(description="parameters this domain's own filters use")
    macs: int = Field(description="multiply-accumulates per image")
    cost_fraction: float = Field(description="cost vs the single-domain backbone (budget unit)")


class DomainsResponse(BaseModel):
    model: str
    version: str
    runtime: str = Field(description="what runs the batches: onnx (compiled graphs) or torch")
    precision: str = Field(description="fp32, or int8 (BAP_PRECISION) graphs")
    budget: float
    budget_unit: str
    totals: dict[str, float]
    domains: list[DomainInfo]


class Status(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str
    version: str
    runtime: str
    precision: str


class Reloaded(BaseModel):
    status: str
    previous: str | None
    version: str


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. unknown_domain")
    detail: str = Field(description="what was wrong and what is accepted")


class FilterBlock(BaseModel):
    block: int = Field(description="gated conv (first conv of basic block), in network order")
    filters: int = Field(description="its filters in the full single-domain backbone")
    kept: int = Field(description="filters some domain uses: the union, all that is stored")
    shared: int = Field(description="kept filters every domain uses")
    domains: dict[str, list[int]] = Field(description="per domain, 1/0 for each kept filter")


class FiltersResponse(BaseModel):
    version: str
    blocks: list[FilterBlock]
