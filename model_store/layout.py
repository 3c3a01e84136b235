"""Where a version keeps its compiled graphs: the manifest keys of each domain's graph and of the
mixed graph, per precision. Plain names only, so training, the store and every runtime agree
without importing a runtime.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError
from .manifest import Manifest

GRAPH_DIR = "graphs"
PRECISIONS = ("fp32", "int8")  # int8: `python -m training quantize` adds graphs/int8/...


def _root(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return GRAPH_DIR if precision == "fp32" else f"{GRAPH_DIR}/{precision}"


def domain_key(domain: str, precision: str = "fp32") -> str:
    """The manifest key (path in the version folder) of one domain's graph."""
    return f"{_root(precision)}/domains/{domain}.onnx"


def mixed_key(precision: str = "fp32") -> str:
    """The manifest key of the mixed union network's graph."""
    return f"{_root(precision)}/mixed.onnx"


MIXED_KEY = mixed_key()
MIXED = ""  # graph_keys' key for the mixed graph (no domain has an empty name)


def graph_keys(folder: Path, manifest: Manifest, precision: str = "fp32") -> dict[str, str]:
    """Each domain's graph key and the mixed one's (under MIXED), all listed in the manifest;
    if one is missing, the error names the command that makes them."""
    keys = {n: domain_key(n, precision) for n in manifest.spec.domain_names}
    keys[MIXED] = mixed_key(precision)
    missing = [k for k in keys.values() if k not in manifest.files]
    if missing:
        v = manifest.version
        make = f"model_store export-graphs {v}"
        if precision != "fp32":
            make = f"training quantize --version {v}"
        raise ArtifactError(
            f"{folder}: no {precision} graphs {missing} in the manifest; make them with "
            f"`python -m {make}`"
        )
    return keys
