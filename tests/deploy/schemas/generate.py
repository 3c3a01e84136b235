"""Regenerate the vendored CRD schemas beside this file (not run by the suite, which only reads
them). No registry here serves KEDA's or KServe's CRD YAML, so they come from packages generated
from those CRDs, read offline:
- KEDA ScaledObject: cloudcoil-models-keda (pydantic models generated from KEDA's CRDs), its
  `model_json_schema()`;
- KServe InferenceService and ServingRuntime: the kserve SDK (models generated from KServe's
  OpenAPI spec), each model's `openapi_types` and `attribute_map` read from its source with ast
  (nothing imported). Kubernetes' own types (V1Container, ...) point into kubernetes-validate's
  `_definitions.json`, which the test loads from that package.
Both become strict: unknown fields are refused (the API server prunes or, with
`kubectl apply --validate=strict`, refuses them), and optional fields are absent, never null.

    python -m venv /tmp/gen && /tmp/gen/bin/pip install cloudcoil-models-keda==2.16.1.0 \
        && /tmp/gen/bin/pip install --no-deps kserve==0.21.0
    /tmp/gen/bin/python tests/deploy/schemas/generate.py
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
K8S = "https://kubernetes.io/api/_definitions.json#/$defs/"
# kubernetes python client names -> kubernetes-validate's definitions, for the ones not found
# by the groups below
K8S_NAMES = {"ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity"}
K8S_GROUPS = ("io.k8s.api.core.v1.", "io.k8s.apimachinery.pkg.apis.meta.v1.", "io.k8s.api.apps.v1.")
DROP = ("title", "default", "description")


def strict(node: Any) -> Any:
    """Pydantic's schema as a CRD reads: no nulls for absent fields, no unknown fields."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    options = node.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        merged = rest[0] if len(rest) == 1 else {"anyOf": rest}
        return strict({k: v for k, v in node.items() if k != "anyOf"} | merged)
    out = {k: strict(v) for k, v in node.items() if k not in DROP}
    if "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def keda() -> dict[str, Any]:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    version = importlib.metadata.version("cloudcoil.models.keda")
    schema = strict(ScaledObject.model_json_schema(by_alias=True))
    return {
        "$comment": f"KEDA ScaledObject (keda.sh/v1alpha1) from cloudcoil-models-keda=={version}, "
        "generated from KEDA's CRDs; regenerate with generate.py",
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }


def _models() -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """kserve model class name -> (openapi_types, attribute_map), read from the source."""
    found = importlib.util.find_spec("kserve")  # its source only: nothing imported
    assert found is not None and found.origin  # installed for generation
    folder = Path(found.origin).parent / "models"
    models = {}
    for path in sorted(folder.glob("*.py")):
        for cls in ast.parse(path.read_text()).body:
            if not isinstance(cls, ast.ClassDef):
                continue
            found = {}
            for stmt in cls.body:
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
                if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
                    found[target.id] = ast.literal_eval(stmt.value)
            if len(found) == 2:
                models[cls.name] = (found["openapi_types"], found["attribute_map"])
    return models


def _k8s(name: str, definitions: set[str]) -> str:
    if name in K8S_NAMES:
        return K8S_NAMES[name]
    if m := re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d+(?:(?:alpha|beta)\d+)?)([A-Z]\w+)", name):
        return f"io.k8s.api.{m[1].lower()}.{m[2].lower()}.{m[3]}"
    bare = re.sub(r"^V1", "", name)
    for group in K8S_GROUPS:
        if group + bare in definitions:
            return group + bare
    raise KeyError(f"no Kubernetes definition for {name}")


def kserve(root: str, definitions: set[str]) -> dict[str, Any]:
    models = _models()
    defs: dict[str, Any] = {}
    unmodelled: set[str] = set()

    def type_of(t: str) -> dict[str, Any]:
        if m := re.fullmatch(r"list\[(.+)\]", t):
            return {"type": "array", "items": type_of(m[1])}
        if m := re.fullmatch(r"dict\(str, (.+)\)", t):
            return {"type": "object", "additionalProperties": type_of(m[1])}
        simple = {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}
        if t in simple:
            return {"type": simple[t]}
        if t == "object":
            return {}
        if t in models:
            add(t)
            return {"$ref": f"#/$defs/{t}"}
        if re.match(r"V1(alpha|beta)\d", t):  # named by the SDK, but it ships no model
            unmodelled.add(t)
            return {"type": "object"}
        return {"$ref": K8S + _k8s(t, definitions)}

    def add(name: str) -> None:
        if name in defs:
            return
        defs[name] = {}
        types, names = models[name]
        defs[name] = {
            "type": "object",
            # status is the controller's to write: a manifest never carries it
            "properties": {names[k]: type_of(t) for k, t in types.items() if k != "status"},
            "additionalProperties": False,
        }

    add(root)
    version = importlib.metadata.version("kserve")
    return {
        "$comment": f"KServe {root} from the kserve SDK=={version} (models generated from KServe's "
        "OpenAPI spec); Kubernetes types from kubernetes-validate; any object for the types it "
        f"names without a model ({', '.join(sorted(unmodelled)) or 'none'}); regenerate with "
        "generate.py",
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"#/$defs/{root}",
        "$defs": defs,
    }


def main() -> None:
    found = importlib.util.find_spec("kubernetes_validate")  # its files only: nothing imported
    assert found is not None and found.origin  # installed for generation
    folder = Path(found.origin).parent / "kubernetes-json-schema"
    newest = sorted(
        folder.glob("v*-local-strict"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)]
    )[-1]
    definitions = set(json.loads((newest / "_definitions.json").read_text())["$defs"])
    out = {
        "keda.sh_v1alpha1_scaledobject.json": keda(),
        "serving.kserve.io_v1beta1_inferenceservice.json": kserve(
            "V1beta1InferenceService", definitions
        ),
        "serving.kserve.io_v1alpha1_servingruntime.json": kserve(
            "V1alpha1ServingRuntime", definitions
        ),
    }
    for name, schema in out.items():
        (HERE / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
