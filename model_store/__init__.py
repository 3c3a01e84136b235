"""What a stored model is: the network both sides share, its cost counter, its preprocessing,
and the verified, versioned artifact format. Training and the server import only these names.

The manifest, spec, preprocessing and store pointers import without torch; every other name is
loaded on first use (PEP 562), so a server running compiled graphs never imports torch and
training never imports ONNX Runtime.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError, one_line
from .layout import MIXED_KEY, PRECISIONS, domain_key, mixed_key
from .manifest import FORMAT_VERSION, DomainMetrics, Manifest, PrecisionRecord
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
from .spec import DomainSpec, ModelSpec, Preprocess, SpecError, domain_name_problems
from .stored import (
    StoredVersion,
    current_version,
    list_models,
    list_versions,
    open_version,
    previous_version,
    version_path,
)
from .versions import (
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
    "read_artifact": "artifact",
    "load_model": "artifact",
    "UNITS": "cost",
    "baseline_cost": "cost",
    "cost_fraction": "cost",
    "domain_cost": "cost",
    "filter_costs": "cost",
    "independent_parameters": "cost",
    "model_parameters": "cost",
    "shared_fraction": "cost",
    "single_domain_parameters": "cost",
    "DomainBatchNorm": "layers",
    "ARCH_BUILDERS": "network",
    "MultiDomainResNet": "network",
    "build_model": "network",
    "OnnxGraphs": "onnx_runtime",
    "make_session": "onnx_runtime",
    "OpenVinoGraphs": "openvino_runtime",
    "export_graphs": "graphs",
    "compile_graph": "openvino_runtime",
    "domain_filters": "slicing",
    "domain_view": "slicing",
    "prune_to_union": "slicing",
    "slice_network": "slicing",
    "union_filters": "slicing",
    "expand_network": "slicing",
    "TorchRuntime": "torch_runtime",
    "filter_map": "filter_map",
}

if TYPE_CHECKING:
    from .artifact import load_model, read_artifact
    from .cost import (
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
    from .filter_map import filter_map
    from .graphs import export_graphs
    from .layers import DomainBatchNorm
    from .network import ARCH_BUILDERS, MultiDomainResNet, build_model
    from .onnx_runtime import OnnxGraphs, make_session
    from .openvino_runtime import OpenVinoGraphs, compile_graph
    from .slicing import (
        domain_filters,
        domain_view,
        expand_network,
        prune_to_union,
        slice_network,
        union_filters,
    )
    from .torch_runtime import TorchRuntime


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
