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


DOMAIN_GRAPHS = ("auto", "views", "union")
# auto: a domain gets its own view graph only where it skips at least this share of the union's
# MACs; elsewhere the union (mixed) graph serves it, and its weights are not held a second time.
VIEW_MIN_SAVING = 0.1


def view_domains(manifest: Manifest, policy: str = "auto") -> list[str]:
    """The domains served through their own view graph (only their filters); the others run
    through the union graph. Each view holds its own sliced copy of the weights: with BAP's
    sharing loss the domains' filters mostly coincide, so at ResNet-50 size a view that saves
    little compute would double the memory of "one model for every domain" (docs/benchmarks.md,
    resnet50). `views`: every domain; `union`: none; `auto`: where the view saves at least
    VIEW_MIN_SAVING of the union's MACs (every domain for a version that does not record them)."""
    if policy not in DOMAIN_GRAPHS:
        raise ValueError(f"domain_graphs {policy!r}; known: {', '.join(DOMAIN_GRAPHS)}")
    names = list(manifest.spec.domain_names)
    union = manifest.totals.get("union_macs")
    if policy == "views" or (policy == "auto" and not union):
        return names
    if policy == "union":
        return []
    return [d for d in names if manifest.domains[d].macs <= (1 - VIEW_MIN_SAVING) * union]


def load_graphs(
    manifest: Manifest, keys: dict[str, str], views: list[str], load: Callable[[str, int], Loaded]
) -> tuple[Loaded, dict[str, Loaded]]:
    """The union graph and the graph of each domain in `views`, each made by `load(key,
    classes)` (a runtime's session or compiled model, told how many logits it must output)."""
    labels = {d.name: len(d.labels) for d in manifest.spec.domains}
    mixed = load(keys[MIXED], sum(labels.values()))
    return mixed, {n: load(k, labels[n]) for n, k in keys.items() if n in views and n != MIXED}
