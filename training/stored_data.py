"""The data of a published version's domains, found by each domain's name in its manifest.

Commands that measure a stored version (evaluate, quantize, measure-bf16) need each domain's
test split, preprocessed the way the version serves it. The manifest records each domain's
data source by name (`Manifest.sources`), and add-domain / remove-domain carry those records,
so the pairing survives any change to the version's domains.
"""

from __future__ import annotations

from collections.abc import Iterator

from model_store import DomainSpec, Manifest

from .data import DomainData
from .sources import SourceError, load_domain


def stored_domains(manifest: Manifest) -> Iterator[tuple[int, DomainSpec, DomainData]]:
    """(index in the spec, the domain's spec, its data) for every domain of the version, the data
    loaded at the size its preprocessing expects."""
    for index, spec in enumerate(manifest.spec.domains):
        entry = manifest.sources.get(spec.name)
        if entry is None:
            raise SourceError(
                f"{manifest.name} {manifest.version}: no data source recorded for domain "
                f"{spec.name!r} (published before sources were recorded by name)"
            )
        data = load_domain(entry, spec.preprocess.resize, spec.preprocess.crop)
        if data.name != spec.name or tuple(data.labels) != tuple(spec.labels):
            raise SourceError(
                f"domain {spec.name!r}: its recorded source now gives domain {data.name!r} with "
                f"labels {list(data.labels)[:5]}..., not the version's {list(spec.labels)[:5]}..."
            )
        yield index, spec, data
