"""What a stored model is: the network both sides share, its cost counter, its preprocessing,
and the verified, versioned artifact format. Training and the server import only these names.

The manifest, spec, preprocessing and store pointers import without torch; every other name is
loaded on first use (PEP 562), so a server running compiled graphs never imports torch and
training never imports ONNX Runtime.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .manifest import (
    FORMAT_VERSION,
    ArtifactError,
    DomainMetrics,
    Manifest,
    add_files,
    read_manifest,
    sha256_file,
    verify_files,
)
from .preprocess import (
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
from .versions import (
    current_version,
    list_versions,
    load_version,
    publish_version,
    set_current,
    version_path,
)

_LAZY = {
    "read_artifact": "artifact",
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
    "MIXED_KEY": "onnx_runtime",
    "OnnxGraphs": "onnx_runtime",
    "PRECISIONS": "onnx_runtime",
    "domain_key": "onnx_runtime",
    "make_session": "onnx_runtime",
    "mixed_key": "onnx_runtime",
    "OpenVinoGraphs": "openvino_runtime",
    "records_for_new_graphs": "graphs",
    "compile_graph": "openvino_runtime",
    "domain_filters": "slicing",
    "domain_view": "slicing",
    "prune_to_union": "slicing",
    "slice_network": "slicing",
    "union_filters": "slicing",
    "TorchRuntime": "torch_runtime",
    "filter_map": "filter_map",
}

if TYPE_CHECKING:
    from .artifact import read_artifact
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
    from .graphs import records_for_new_graphs
    from .layers import DomainBatchNorm
    from .network import ARCH_BUILDERS, MultiDomainResNet, build_model
    from .onnx_runtime import (
        MIXED_KEY,
        PRECISIONS,
        OnnxGraphs,
        domain_key,
        make_session,
        mixed_key,
    )
    from .openvino_runtime import OpenVinoGraphs, compile_graph
    from .slicing import domain_filters, domain_view, prune_to_union, slice_network, union_filters
    from .torch_runtime import TorchRuntime


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'model_store' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


__all__ = [
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
    "Preprocess",
    "SpecError",
    "TorchRuntime",
    "add_files",
    "domain_key",
    "domain_name_problems",
    "baseline_cost",
    "build_model",
    "compile_graph",
    "cost_fraction",
    "current_version",
    "decode_image",
    "domain_cost",
    "domain_filters",
    "domain_view",
    "eval_pixels",
    "eval_transform",
    "filter_costs",
    "filter_map",
    "image_to_uint8",
    "independent_parameters",
    "list_versions",
    "load_version",
    "make_session",
    "mixed_key",
    "model_parameters",
    "normalize",
    "preprocess_bytes",
    "prune_to_union",
    "publish_version",
    "read_artifact",
    "read_manifest",
    "records_for_new_graphs",
    "resize_shorter",
    "set_current",
    "shared_fraction",
    "sha256_file",
    "single_domain_parameters",
    "slice_network",
    "union_filters",
    "verify_files",
    "version_path",
]
