"""What a stored model is: the network both sides share, its cost counter, its preprocessing,
and the verified, versioned artifact format. Training and the server import only these names.

The manifest, spec, preprocessing and store pointers import without torch; every other name is
loaded on first use (PEP 562), so a server running compiled graphs never imports torch and
training never imports ONNX Runtime.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .preprocess import (
    ACCEPTED_FORMATS,
    ImageError,
    ImageTooLarge,
    decode_image,
    eval_pixels,
    eval_transform,
    image_to_uint8,
    normalize,
    preprocess_bytes,
    resize_shorter,
)
from .runtimes.layout import MIXED_KEY, PRECISIONS, domain_key, mixed_key
from .spec import DomainSpec, ModelSpec, Preprocess, SpecError, domain_name_problems
from .store.errors import ArtifactError, one_line
from .store.manifest import FORMAT_VERSION, DomainMetrics, Manifest, PrecisionRecord
from .store.stored import (
    StoredVersion,
    current_version,
    list_models,
    list_versions,
    open_version,
    previous_version,
    version_path,
)
from .store.versions import (
    Publication,
    collect_garbage,
    derive_version,
    load_version,
    publish_version,
    recompile_version,
    rollback,
    seed_versions,
    set_current,
)

_LAZY = {
    "read_artifact": "store.artifact",
    "load_model": "store.artifact",
    "UNITS": "nets.cost",
    "baseline_cost": "nets.cost",
    "cost_fraction": "nets.cost",
    "domain_cost": "nets.cost",
    "filter_costs": "nets.cost",
    "independent_parameters": "nets.cost",
    "model_parameters": "nets.cost",
    "shared_fraction": "nets.cost",
    "single_domain_parameters": "nets.cost",
    "DomainBatchNorm": "nets.layers",
    "ARCH_BUILDERS": "nets.network",
    "MultiDomainResNet": "nets.network",
    "build_model": "nets.network",
    "OnnxGraphs": "runtimes.onnx_runtime",
    "make_session": "runtimes.onnx_runtime",
    "OpenVinoGraphs": "runtimes.openvino_runtime",
    "export_graphs": "runtimes.graphs",
    "compile_graph": "runtimes.openvino_runtime",
    "domain_filters": "nets.slicing",
    "domain_view": "nets.slicing",
    "prune_to_union": "nets.slicing",
    "slice_network": "nets.slicing",
    "union_filters": "nets.slicing",
    "expand_network": "nets.slicing",
    "TorchRuntime": "runtimes.torch_runtime",
    "filter_map": "filter_map",
}

if TYPE_CHECKING:
    from .filter_map import filter_map
    from .nets.cost import (
        UNITS,
        baseline_cost,
        cost_fraction,
        domain_cost,
        filter_costs,
        independent_parameters,
        model_parameters,
        shared_fraction,
        single_domain_parameters,
    )
    from .nets.layers import DomainBatchNorm
    from .nets.network import ARCH_BUILDERS, MultiDomainResNet, build_model
    from .nets.slicing import (
        domain_filters,
        domain_view,
        expand_network,
        prune_to_union,
        slice_network,
        union_filters,
    )
    from .runtimes.graphs import export_graphs
    from .runtimes.onnx_runtime import OnnxGraphs, make_session
    from .runtimes.openvino_runtime import OpenVinoGraphs, compile_graph
    from .runtimes.torch_runtime import TorchRuntime
    from .store.artifact import load_model, read_artifact


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'model_store' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


__all__ = [
    "ACCEPTED_FORMATS",
    "ARCH_BUILDERS",
    "FORMAT_VERSION",
    "UNITS",
    "ArtifactError",
    "DomainBatchNorm",
    "DomainMetrics",
    "DomainSpec",
    "ImageError",
    "ImageTooLarge",
    "MIXED_KEY",
    "Manifest",
    "ModelSpec",
    "MultiDomainResNet",
    "OnnxGraphs",
    "OpenVinoGraphs",
    "PRECISIONS",
    "PrecisionRecord",
    "Publication",
    "Preprocess",
    "SpecError",
    "StoredVersion",
    "TorchRuntime",
    "domain_key",
    "domain_name_problems",
    "baseline_cost",
    "build_model",
    "collect_garbage",
    "compile_graph",
    "cost_fraction",
    "current_version",
    "decode_image",
    "derive_version",
    "domain_cost",
    "domain_filters",
    "domain_view",
    "eval_pixels",
    "eval_transform",
    "expand_network",
    "export_graphs",
    "filter_costs",
    "filter_map",
    "image_to_uint8",
    "independent_parameters",
    "list_models",
    "list_versions",
    "load_model",
    "load_version",
    "make_session",
    "mixed_key",
    "model_parameters",
    "normalize",
    "one_line",
    "open_version",
    "previous_version",
    "preprocess_bytes",
    "prune_to_union",
    "publish_version",
    "read_artifact",
    "recompile_version",
    "resize_shorter",
    "rollback",
    "seed_versions",
    "set_current",
    "shared_fraction",
    "single_domain_parameters",
    "slice_network",
    "union_filters",
    "version_path",
]
