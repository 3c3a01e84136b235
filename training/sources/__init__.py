"""Where domains come from. Each source is a function returning a `DomainData`; a training
config names it by key (`{"source": "fashion_mnist", "name": "fashion", ...}`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..data import DomainData
from .synthetic import synthetic_domain

SourceFn = Callable[..., DomainData]

SOURCES: dict[str, SourceFn] = {
    "synthetic": synthetic_domain,
}


class SourceError(ValueError):
    """A domain entry that cannot be loaded; the message says what to install or fix."""


def load_domain(entry: dict[str, Any], resize: int, crop: int) -> DomainData:
    """Load one domain from its config entry (`source` picks the loader, the rest are its args)."""
    args = dict(entry)
    kind = args.pop("source", None)
    if kind not in SOURCES:
        raise SourceError(f"unknown data source {kind!r}; known: {', '.join(sorted(SOURCES))}")
    try:
        return SOURCES[kind](resize=resize, crop=crop, **args)
    except TypeError as exc:
        raise SourceError(f"bad arguments for source {kind!r}: {exc}") from exc
