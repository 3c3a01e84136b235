"""A version's manifest and file checks: everything about a stored version except its tensors.

Torch-free on purpose: the server running compiled graphs reads, verifies and serves a version
with this module alone. safetensors holds tensors only and has no checksum, so the manifest
carries everything else (spec, budget, labels, preprocessing, each domain's data source, what
was measured and on which files) and the SHA-256 and size of every file of the version. The
manifest itself is covered by the SHA-256 the store's record keeps for the version (refs.py).

A manifest is parsed only after a size limit and then checked field by field, so a malformed
or hostile one is refused in one line naming the file and the field, never by a traceback.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..spec import ModelSpec, SpecError
from .errors import ArtifactError
from .files import check_key

FORMAT_VERSION = 2  # 2: typed precision records and per-domain sources (1 is still read)
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MAX_MANIFEST_BYTES = 4 << 20  # a thousand-domain manifest is well under 1 MiB
BUDGET_UNITS = ("macs", "params")
VERSION_NAME = re.compile(r"v[1-9][0-9]{0,8}", re.ASCII)  # v1, v2, ...: no v07, no v١
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class DomainMetrics:
    """What one domain measured at publish time (accuracy on its test split)."""

    accuracy: float | None
    parameters: int
    macs: int
    cost_fraction: float  # in the budget's unit, against the single-domain backbone


@dataclass(frozen=True)
class PrecisionRecord:
    """What serving one precision (int8 graphs, bf16 through OpenVINO) costs in accuracy: each
    domain's full-test-set accuracy through the fp32 graphs and through that precision, on the
    files named (key -> SHA-256) by the runtime and CPU named. A server serves a precision for a
    domain only with its figure on record."""

    runtime: str
    cpu: str
    files: dict[str, str]
    accuracy_fp32: dict[str, float]
    accuracy: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """Everything about a version except its tensors."""

    name: str
    spec: ModelSpec
    budget: float
    budget_unit: str
    domains: dict[str, DomainMetrics]
    totals: dict[str, float]
    training: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # each domain's data source (its training-config entry), found by the domain's name
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "int8" / "bf16" -> what was measured of that precision on this version's files
    precisions: dict[str, PrecisionRecord] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        data["format_version"] = FORMAT_VERSION
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_bytes(self) -> bytes:
        return self.to_json().encode()

    @classmethod
    def from_json(cls, text: str | bytes, source: Path) -> Manifest:
        """Parse and check a manifest; ArtifactError naming `source` and the field otherwise."""
        if len(text) > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{source}: {len(text)} bytes, over {MAX_MANIFEST_BYTES}")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{source}: not valid JSON ({exc})") from None
        except RecursionError:
            raise ArtifactError(f"{source}: nested too deeply to be a manifest") from None
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError, AttributeError, SpecError) as exc:
            text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__} {exc}"
            raise ArtifactError(f"{source}: malformed manifest ({text[:300]})") from None


def _parse(data: Any) -> Manifest:
    """The checked Manifest of parsed JSON (raises ValueError/KeyError/TypeError otherwise)."""
    _require(isinstance(data, dict), "expected a JSON object")
    fmt = data.get("format_version")
    _require(
        fmt in READABLE_FORMATS,
        f"format_version {fmt!r} is not supported (this build reads {READABLE_FORMATS})",
    )
    if fmt == 1:
        data = _from_format_1(data)
    known = {f for f in Manifest.__dataclass_fields__}
    _require(not set(data) - known, f"unknown fields {sorted(set(data) - known)}")
    _require(isinstance(data["name"], str), "name must be a string")
    _require(
        VERSION_NAME.fullmatch(_text(data["version"], "version")) is not None,
        f"version {data['version']!r} is not a version name like v3",
    )
    budget = _number(data["budget"], "budget")
    _require(0 < budget <= 1, f"budget must be in (0, 1], got {budget}")
    _require(data["budget_unit"] in BUDGET_UNITS, f"budget_unit must be one of {BUDGET_UNITS}")
    spec = ModelSpec.from_dict(_dict(data["spec"], "spec"))
    domains = {
        k: DomainMetrics(**_dict(v, f"domains.{k}"))
        for k, v in _dict(data["domains"], "domains").items()
    }
    _require(set(domains) == set(spec.domain_names), "metrics name other domains than the spec")
    for name, m in domains.items():
        _require(
            m.accuracy is None or 0 <= _number(m.accuracy, name) <= 1,
            f"domains.{name}.accuracy must be in [0, 1]",
        )
    files = {check_key(k): _file_entry(k, v) for k, v in _dict(data["files"], "files").items()}
    _require(WEIGHTS in files, f"lists no {WEIGHTS}")
    sources = {
        k: _dict(v, f"sources.{k}") for k, v in _dict(data.get("sources", {}), "sources").items()
    }
    _require(set(sources) <= set(spec.domain_names), "sources name domains the spec lacks")
    precisions = {
        p: _precision(p, r, files, spec.domain_names)
        for p, r in _dict(data.get("precisions", {}), "precisions").items()
    }
    return Manifest(
        name=data["name"],
        spec=spec,
        budget=budget,
        budget_unit=data["budget_unit"],
        domains=domains,
        totals={k: _number(v, f"totals.{k}") for k, v in _dict(data["totals"], "totals").items()},
        training=_dict(data.get("training", {}), "training"),
        provenance=_dict(data.get("provenance", {}), "provenance"),
        version=data["version"],
        files=files,
        sources=sources,
        precisions=precisions,
        format_version=FORMAT_VERSION,
    )


def _from_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept the int8 and bf16 measurements as free-form `training` entries and each
    domain's source only in the training config (by position); read them into format 2's
    typed, named fields."""
    data = dict(data)
    training = dict(_dict(data.get("training", {}), "training"))
    files = _dict(data.get("files", {}), "files")
    precisions = {}
    for precision in ("int8", "bf16"):
        old = training.pop(precision, None)
        if not isinstance(old, dict):
            continue
        rows = _dict(old.get("domains", {}), f"training.{precision}.domains")
        from_graphs = precision == "int8"
        measured = [
            k
            for k in files
            if k.startswith("graphs/")
            and k.endswith(".onnx")
            and (k.startswith("graphs/int8/") == from_graphs)
        ]
        precisions[precision] = {
            "runtime": old.get("runtime", "onnxruntime"),
            "cpu": old.get("cpu", "unknown"),
            "files": {k: files[k]["sha256"] for k in measured},
            "accuracy_fp32": {d: r["accuracy_fp32"] for d, r in rows.items()},
            "accuracy": {d: r[f"accuracy_{precision}"] for d, r in rows.items()},
            "settings": {k: v for k, v in old.items() if k not in ("runtime", "cpu", "domains")},
        }
    data["training"], data["precisions"] = training, precisions
    entries = list(_dict(training.get("config", {}), "training.config").get("domains", []))
    added = _dict(training.get("add_domain", {}), "training.add_domain").get("domain")
    entries += [added] if isinstance(added, dict) else []
    names = {d.get("name") for d in _dict(data["spec"], "spec").get("domains", [])}
    data["sources"] = {
        e["name"]: e for e in entries if isinstance(e, dict) and e.get("name") in names
    }
    data["format_version"] = FORMAT_VERSION
    return data


def _precision(
    name: str, raw: Any, files: dict[str, Any], domains: tuple[str, ...]
) -> PrecisionRecord:
    record = PrecisionRecord(**_dict(raw, f"precisions.{name}"))
    for key, digest in _dict(record.files, f"precisions.{name}.files").items():
        _require(
            files.get(key, {}).get("sha256") == digest,
            f"precisions.{name} was measured on {key!r}, which the version does not hold",
        )
    for table in (record.accuracy, record.accuracy_fp32):
        _require(
            set(_dict(table, f"precisions.{name}")) <= set(domains),
            f"precisions.{name} names domains the spec lacks",
        )
        for value in table.values():
            _require(0 <= _number(value, f"precisions.{name}") <= 1, "accuracy must be in [0, 1]")
    return record


def _file_entry(key: str, raw: Any) -> dict[str, Any]:
    entry = _dict(raw, f"files.{key}")
    digest, size = entry.get("sha256"), entry.get("bytes")
    _require(
        isinstance(digest, str) and _SHA256.fullmatch(digest) is not None,
        f"files.{key}.sha256 is not a SHA-256 hex digest",
    )
    _require(type(size) is int and size >= 0, f"files.{key}.bytes is not a byte count")
    return {"sha256": digest, "bytes": size}


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


def _dict(value: Any, what: str) -> dict[str, Any]:
    _require(isinstance(value, dict), f"{what} must be an object")
    return value


def _text(value: Any, what: str) -> str:
    _require(isinstance(value, str), f"{what} must be a string")
    return value


def _number(value: Any, what: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    _require(ok, f"{what} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def file_entry(data: bytes) -> dict[str, Any]:
    """The manifest's record of one file: its SHA-256 and size."""
    return {"sha256": sha256_bytes(data), "bytes": len(data)}


def check_bytes(path: Path, data: bytes, entry: dict[str, Any]) -> bytes:
    """`data` (the bytes read from `path`) if they are what the manifest records."""
    if len(data) != entry["bytes"]:
        raise ArtifactError(
            f"{path}: {len(data)} bytes, manifest says {entry['bytes']} (truncated?)"
        )
    if sha256_bytes(data) != entry["sha256"]:
        raise ArtifactError(f"{path}: SHA-256 does not match the manifest (corrupt or tampered)")
    return data
