"""torchvision's own ResNets, the reference our ImageNet layouts are checked against (tests only).

The torchvision wheel on the package index is a CUDA build: its C++ operators do not load against
the CPU torch here, and its import then fails where `_meta_registrations.py` registers fake
kernels for `torchvision::nms` and `torchvision::qnms`, operators that only the C++ library
defines. Defining those two schemas first (the C++ library's own) lets the pure-Python models
import; no operator is ever called. Where the C++ operators do load, the plain import works and
nothing is defined.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_libraries: list[torch.library.Library] = []  # kept alive: a collected Library drops its ops


def import_torchvision() -> ModuleType:
    """torchvision, importable on a CPU torch whatever build of it is installed."""
    try:
        import torchvision
    except RuntimeError:  # "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]  # the failed import left half-initialised modules
        library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            library.define(schema)
        _libraries.append(library)
        import torchvision
    return torchvision
