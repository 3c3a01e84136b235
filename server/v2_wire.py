"""The Open Inference Protocol's REST body format (KServe v2, Triton's HTTP API): request bodies
in, response bodies out, with JSON tensors and the binary tensor extension. No HTTP, no model.

Read against the reference client, tritonclient.http (`_utils._get_inference_request`,
`_infer_input.InferInput`, `_requested_output.InferRequestedOutput`, `_infer_result.InferResult`):
- a body is one JSON object, or, when the `Inference-Header-Content-Length` header is sent, that
  many bytes of JSON followed by the raw bytes of every input whose `parameters` hold
  `binary_data_size`, in the order the inputs are listed;
- a raw FP32 tensor is its little-endian float32 values in row-major order; a raw BYTES tensor is
  each element as a 4-byte little-endian length and then its bytes (`serialize_byte_tensor`);
- JSON `data` is a flat row-major list or nested lists; JSON BYTES elements are strings;
- an output asks for raw bytes with `parameters.binary_data` (the request's
  `parameters.binary_data_output` sets the default; tritonclient sends it when it names no
  outputs) and for top-k classes with `parameters.classification` = k;
- a response with raw outputs carries the length of its JSON part in the same header.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BadRequest

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = ("BYTES", "FP32")
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InputTensor:
    """One input as sent: BYTES as a list of bytes, FP32 as an array of the declared shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[bytes] | np.ndarray
    binary: bool  # came as raw bytes (binary tensor extension), not as JSON data


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int  # top-k classes as "score:index:label" strings; 0: the tensor itself


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output, raw if `binary_default`
    binary_default: bool


@dataclass(frozen=True)
class OutputTensor:
    """One output to send: FP32 as an array, BYTES as a list of strings."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[str]
    binary: bool


def header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header's value (None when absent)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"Inference-Header-Content-Length must be a byte count, got {value!r}")
    return int(value)


def parse_request(body: bytes, json_length: int | None) -> InferRequest:
    """The request in `body`; BadRequest (400) naming the first thing that breaks the protocol."""
    if json_length is not None and json_length > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length is {json_length} but the body holds {len(body)} bytes"
        )
    end = len(body) if json_length is None else json_length
    try:
        doc = json.loads(body[:end])
    except (ValueError, UnicodeDecodeError) as exc:
        hint = "" if json_length is not None else " (binary tensors need that header)"
        raise BadRequest(
            f"the inference header is not JSON{hint}: send Inference-Header-Content-Length "
            f"with raw tensor bytes after the JSON ({exc})"
        ) from None
    _require(isinstance(doc, dict), "the inference request must be a JSON object")
    raw, offset = memoryview(body)[end:], 0
    inputs = []
    for i, item in enumerate(_list(doc, "inputs", required=True)):
        tensor, size = _input(item, i, raw[offset:])
        inputs.append(tensor)
        offset += size
    _require(
        offset == len(raw),
        f"{len(raw) - offset} bytes after the inputs' binary_data_size total ({offset}); "
        "every raw byte must belong to an input",
    )
    params = _dict(doc, "parameters")
    binary_default = params.get("binary_data_output", False)
    _require(isinstance(binary_default, bool), "parameters.binary_data_output must be a boolean")
    outputs = None
    if "outputs" in doc:
        outputs = [_output(o, binary_default) for o in _list(doc, "outputs")]
        names = [o.name for o in outputs]
        _require(len(set(names)) == len(names), f"an output is requested twice: {names}")
    request_id = doc.get("id")
    _require(request_id is None or isinstance(request_id, str), "id must be a string")
    return InferRequest(request_id, inputs, outputs, binary_default)


def encode_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when raw outputs follow it."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    entries, chunks = [], []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            chunk = _raw(out)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif isinstance(out.values, np.ndarray):
            entry["data"] = out.values.ravel().tolist()
        else:
            entry["data"] = out.values
        entries.append(entry)
    doc["outputs"] = entries
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def serialize_bytes(items: list[bytes]) -> bytes:
    """BYTES elements as raw tensor data: each one's 4-byte little-endian length, then it."""
    return b"".join(part for item in items for part in (_LENGTH.pack(len(item)), item))


def _raw(out: OutputTensor) -> bytes:
    if isinstance(out.values, np.ndarray):
        return out.values.astype("<f4", copy=False).tobytes()
    return serialize_bytes([s.encode() for s in out.values])


def _input(item: object, i: int, raw: memoryview) -> tuple[InputTensor, int]:
    """Input number i, reading its raw bytes (if any) from the start of `raw`; and their size."""
    if not isinstance(item, dict):
        raise BadRequest(f"inputs[{i}] must be a JSON object")
    name, datatype = item.get("name"), item.get("datatype")
    _require(isinstance(name, str) and name != "", f"inputs[{i}] needs a name")
    _require(
        datatype in DATATYPES,
        f"input {name!r}: datatype {datatype!r}; this server takes {' or '.join(DATATYPES)}",
    )
    shape = item.get("shape")
    _require(
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape),
        f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}",
    )
    count = math.prod(shape)
    size = _dict(item, "parameters").get("binary_data_size")
    if size is not None:
        _require(
            isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= len(raw),
            f"input {name!r}: binary_data_size {size!r} with {len(raw)} raw bytes left",
        )
        _require("data" not in item, f"input {name!r}: both data and binary_data_size")
        data = bytes(raw[:size])
        if datatype == "BYTES":
            values: list[bytes] | np.ndarray = _split_bytes(data, count, name)
        else:
            values = _fp32(data, count, name).reshape(shape)
        return InputTensor(name, datatype, tuple(shape), values, binary=True), size
    _require("data" in item, f"input {name!r}: no data and no binary_data_size")
    flat = _flatten(item["data"])
    _require(len(flat) == count, f"input {name!r}: {len(flat)} values for shape {shape}")
    if datatype == "BYTES":
        _require(all(isinstance(v, str) for v in flat), f"input {name!r}: BYTES data are strings")
        values = [v.encode() for v in flat]
    else:
        _require(
            all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat),
            f"input {name!r}: FP32 data are numbers",
        )
        values = np.asarray(flat, dtype=np.float32).reshape(shape)
    return InputTensor(name, datatype, tuple(shape), values, binary=False), 0


def _split_bytes(data: bytes, count: int, name: str) -> list[bytes]:
    items, offset = [], 0
    while offset < len(data):
        _require(offset + 4 <= len(data), f"input {name!r}: a BYTES length prefix is cut short")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        _require(offset + length <= len(data), f"input {name!r}: a BYTES element is cut short")
        items.append(data[offset : offset + length])
        offset += length
    _require(len(items) == count, f"input {name!r}: {len(items)} BYTES elements for {count}")
    return items


def _fp32(data: bytes, count: int, name: str) -> np.ndarray:
    _require(len(data) == 4 * count, f"input {name!r}: {len(data)} bytes for {count} FP32 values")
    return np.frombuffer(data, dtype="<f4").astype(np.float32, copy=False)


def _flatten(data: object) -> list[object]:
    """Nested JSON lists in row-major order (the protocol allows flat or nested)."""
    if not isinstance(data, list):
        return [data]
    flat: list[object] = []
    for value in data:
        flat.extend(_flatten(value) if isinstance(value, list) else [value])
    return flat


def _output(item: object, binary_default: bool) -> RequestedOutput:
    if not isinstance(item, dict):
        raise BadRequest("each of outputs must be a JSON object")
    name = item.get("name")
    _require(isinstance(name, str) and name != "", "each of outputs needs a name")
    params = _dict(item, "parameters")
    binary = params.get("binary_data", binary_default)
    k = params.get("classification", 0)
    _require(isinstance(binary, bool), f"output {name!r}: binary_data must be a boolean")
    _require(
        isinstance(k, int) and not isinstance(k, bool) and k >= 0,
        f"output {name!r}: classification must be a class count (an integer >= 1), got {k!r}",
    )
    return RequestedOutput(name, binary, k)


def _list(doc: dict[str, Any], key: str, required: bool = False) -> list[Any]:
    value = doc.get(key, None if required else [])
    _require(
        isinstance(value, list) and (value or not required),
        f"{key} must be a {'non-empty ' if required else ''}list",
    )
    return value


def _dict(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    _require(isinstance(value, dict), f"{key} must be a JSON object")
    return value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BadRequest(message)
