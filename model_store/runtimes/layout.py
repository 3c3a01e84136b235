"""Where a version keeps its compiled graphs: the manifest keys of each domain's graph and of the
mixed graph, per precision. Plain names only, so training, the store and every runtime agree
without importing a runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..store.errors import ArtifactError
from ..store.manifest import Manifest

Loaded = TypeVar("Loaded")

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


DOMAIN_GRAPHS = ("views", "union")


def view_domains(manifest: Manifest, policy: str = "views") -> list[str]:
    """The domains served through their own view graph; the others run through the union graph.
    `views` (the default): every domain, and no union graph is loaded (mixed batches run view by
    view, graph_set.py). A view holds only the domain's filters, with BN folded into its convs,
    where the union graph computes every kept filter and applies each image's BN and mask:
    ResNet-50 224 px, batch 16, the views ran 2.2-2.4x faster than the unpruned network and the
    union graph 1.34-1.45x, for nearly the same MACs (docs/benchmarks.md, resnet50). But each
    view holds its own sliced copy of the weights (35.5 MB each there against the 40.1 MB union):
    `union` keeps one copy for every domain, for memory-bound boxes."""
    if policy not in DOMAIN_GRAPHS:
        raise ValueError(f"domain_graphs {policy!r}; known: {', '.join(DOMAIN_GRAPHS)}")
    return list(manifest.spec.domain_names) if policy == "views" else []


def load_graphs(
    manifest: Manifest, keys: dict[str, str], views: list[str], load: Callable[[str, int], Loaded]
) -> tuple[Loaded | None, dict[str, Loaded]]:
    """The graph of each domain in `views`, and the union graph unless every domain has a view
    (mixed batches then run view by view: graph_set.py), each made by `load(key, classes)` (a
    runtime's session or compiled model, told how many logits it must output)."""
    labels = {d.name: len(d.labels) for d in manifest.spec.domains}
    own = {n: load(k, labels[n]) for n, k in keys.items() if n in views and n != MIXED}
    if set(own) == set(labels):
        return None, own
    return load(keys[MIXED], sum(labels.values())), own
