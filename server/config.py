"""Every server setting, read once at start-up into one typed object (env prefix BAP_).

`python -m server` maps each field to a flag of the same name (`--max-batch-size`), and flags
win over the environment. The app receives the object from `create_app`, never from a global.
"""

from __future__ import annotations

import logging
import os
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Runtime = Literal["auto", "onnx", "openvino", "torch"]
Precision = Literal["fp32", "int8", "bf16"]
PRECISION_RUNTIMES = {"int8": ("onnx", "auto"), "bf16": ("openvino",)}  # fp32: every runtime

BatchingPolicy = Literal["per-domain", "mixed", "auto"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
MIN_TOKEN_LENGTH = 16
log = logging.getLogger("server")


def bundled_store() -> Path:
    """The store that ships inside the model_store package (the default model)."""
    return Path(str(files("model_store").joinpath("bundled")))


class Settings(BaseSettings):
    """Server settings; each is also the environment variable BAP_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="BAP_", extra="forbid")

    store: Path = Field(default_factory=bundled_store, description="model store folder")
    model: str = Field("embedded", description="model name inside the store")
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 inside a container)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="server processes on the port, each with its own event loop, batcher and "
        "copy of the model (server/workers.py); on a 2-core box 2 gave the bundled model 1.3x "
        "the req/s at 32 clients and two thirds of the p99, at 2.5x the memory; keep 1 for a "
        "large model, whose inference already keeps every core busy",
    )
    max_batch_size: int = Field(16, ge=1, le=1024, description="images per batch at most")
    max_batch_delay_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="how long the oldest queued image may wait for others while an inference "
        "worker is idle; 0: a batch starts as soon as a worker is free, holding every image that "
        "arrived while every worker was busy (batches form under load, none waits at 1 client)",
    )
    max_queue: int = Field(64, ge=1, description="queued images per domain before 503")
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="request body limit (413)")
    max_pixels: int = Field(
        40_000_000, ge=1, description="decoded image size limit, checked before decoding (413)"
    )
    decode_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="images decoded at once across all requests (default: one per core); the "
        "others wait, so a burst of large images cannot hold max_pixels of pixels each at once",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="threads of the runtime for one batch (default: ONNX Runtime 1, and it runs "
        "cores // this many batches at once; OpenVINO every core but one, left to the event loop, "
        "one batch at a time; torch its own default, every core)",
    )
    runtime: Runtime = Field(
        "auto",
        description="onnx: the version's compiled graphs in ONNX Runtime (refused without them); "
        "openvino: the same graphs in OpenVINO (pip install .[openvino]); torch; "
        "auto: onnx when the version carries graphs (python -m model_store export-graphs)",
    )
    domain_graphs: Literal["views", "union"] = Field(
        "views",
        description="compiled runtimes: views runs each domain's images through its own graph "
        "(only its filters, BN folded: the fastest; a mixed batch runs view by view), union "
        "every batch through the union graph (every domain's weights held once: the least "
        "memory)",
    )
    precision: Precision = Field(
        "fp32",
        description="int8 (runtime onnx or auto): the version's int8 graphs (python -m training "
        "quantize adds them with their test accuracy); bf16 (runtime openvino, a CPU with "
        "avx512_bf16 or AMX): once python -m training measure-bf16 has recorded its accuracy; "
        "both shown in /domains",
    )
    admin_token: SecretStr | None = Field(
        None, description=f"enables POST /admin/reload; {MIN_TOKEN_LENGTH}+ characters"
    )
    admin_token_file: Path | None = Field(
        None, description="read the admin token from this file (not visible in `ps`)"
    )
    log_level: LogLevel = Field("info", description="log level")
    batching: BatchingPolicy = Field(
        "auto", description="per-domain, mixed (one pass across domains) or auto (see batching.py)"
    )
    auto_domain_batch: int | None = Field(
        None,
        ge=1,
        description="auto batching: a domain with this many images waiting runs alone "
        "(default: max batch size)",
    )
    result_timeout_s: float = Field(
        30.0, gt=0, description="the longest a request waits for its image's result (503)"
    )
    drain_seconds: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )

    @model_validator(mode="before")
    @classmethod
    def _old_threads_name(cls, values: Any) -> Any:
        """BAP_TORCH_THREADS was this setting's name, though it sets every runtime's threads:
        still read when BAP_THREADS is not set, with a deprecation line."""
        old = os.environ.get("BAP_TORCH_THREADS")
        if old is not None and isinstance(values, dict) and values.get("threads") is None:
            log.warning("BAP_TORCH_THREADS is deprecated: set BAP_THREADS (the same setting)")
            values = {**values, "threads": old}
        return values

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # Compose files pass `BAP_ADMIN_TOKEN=${BAP_ADMIN_TOKEN:-}`: empty means "not configured".
        return None if value == "" else value

    @model_validator(mode="after")
    def _precision_has_its_runtime(self) -> Settings:
        runtimes = PRECISION_RUNTIMES.get(self.precision)
        if runtimes is not None and self.runtime not in runtimes:
            raise ValueError(
                f"precision {self.precision} runs with runtime {' or '.join(runtimes)}, "
                f"not {self.runtime}"
            )
        return self

    @model_validator(mode="after")
    def _token_from_file(self) -> Settings:
        if self.admin_token_file is None:
            return self
        if self.admin_token is not None:
            raise ValueError("give the admin token or its file (admin_token_file), not both")
        try:
            token = self.admin_token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"admin_token_file: cannot read {self.admin_token_file} ({exc})"
            ) from exc
        self.admin_token = self._token_long_enough(SecretStr(token)) if token else None
        return self

    @field_validator("admin_token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"admin token must be at least {MIN_TOKEN_LENGTH} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`), "
                "or leave it unset to disable /admin/reload"
            )
        return value


async def get_settings(request: Request) -> Settings:
    """The app's settings, as a dependency (tests build apps with other settings)."""
    return request.app.state.settings
