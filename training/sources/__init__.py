"""Where domains come from. Each source is a function returning a `DomainData`; a training
config names it by key (`{"source": "fashion_mnist", "name": "fashion", ...}`).

Every real source takes `name, resize, crop` plus its own arguments, and these common ones:
`train_limit` / `test_limit` (seeded random subsets, None = all), `seed` (splits and subsets)
and `hflip` (whether training may flip images; off by default for digits).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..data import DomainData
from .common import SourceError
from .decathlon import decathlon
from .folders import folder, sketch
from .packaged import animal_mnist, elpv, fashion_mnist, mnist
from .skimage_data import lfw_faces, textures
from .synthetic import synthetic_domain

SourceFn = Callable[..., DomainData]

SOURCES: dict[str, SourceFn] = {
    "synthetic": synthetic_domain,
    "folder": folder,
    "decathlon": decathlon,
    "sketch": sketch,
    "fashion_mnist": fashion_mnist,
    "mnist": mnist,
    "animal_mnist": animal_mnist,
    "textures": textures,
    "lfw_faces": lfw_faces,
    "elpv": elpv,
}

__all__ = ["SOURCES", "SourceError", "SourceFn", "load_domain"]


def load_domain(entry: dict[str, Any], resize: int, crop: int) -> DomainData:
    """Load one domain from its config entry (`source` picks the loader, the rest are its args)."""
    args = dict(entry)
    kind = args.pop("source", None)
    if kind not in SOURCES:
        raise SourceError(f"unknown data source {kind!r}; known: {', '.join(sorted(SOURCES))}")
    fn = SOURCES[kind]
    # Check the arguments before calling, so a TypeError raised inside a loader stays a bug
    # with its traceback instead of being reported as a config mistake.
    try:
        inspect.signature(fn).bind(resize=resize, crop=crop, **args)
    except TypeError as exc:
        raise SourceError(f"bad arguments for source {kind!r}: {exc}") from exc
    data = fn(resize=resize, crop=crop, **args)
    if not len(data.test):
        raise SourceError(
            f"domain {data.name!r} has no test images, so its accuracy cannot be measured; "
            f"give the source a test split (or a larger one)"
        )
    return data
