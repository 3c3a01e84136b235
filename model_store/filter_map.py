"""Which filters each domain of a stored version uses, block by block: the picture of the method.

Read from the version's weights (the stored per-domain masks over the filters that survived
pruning) with safetensors' numpy loader, so the torch-free server can draw it; the bytes are the
ones checked against the manifest.
"""

from __future__ import annotations

from typing import Any

from safetensors.numpy import load

from .store.manifest import WEIGHTS
from .store.stored import StoredVersion


def filter_map(stored: StoredVersion) -> list[dict[str, Any]]:
    """Per gated conv: its width in the full backbone, the filters kept (the union), those every
    domain shares, and each domain's on/off switch over the kept filters."""
    spec = stored.manifest.spec
    names, full = spec.domain_names, spec.unpruned().gated_filters()
    weights = load(stored.read(WEIGHTS))
    masks = [weights[key] > 0 for key in spec.mask_keys()]
    return [
        {
            "block": i,
            "filters": filters,
            "kept": int(on.any(axis=0).sum()),
            "shared": int(on.all(axis=0).sum()),
            "domains": {name: [int(v) for v in on[d]] for d, name in enumerate(names)},
        }
        for i, (filters, on) in enumerate(zip(full, masks, strict=True))
    ]
