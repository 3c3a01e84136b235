"""deploy/k8s, validated offline: each kustomization rendered by kubectl's built-in kustomize
(Debian's kubectl 1.20 renders them too), the Kubernetes resources against the Kubernetes
schemas (kubernetes-validate, strict), KEDA's and KServe's against their CRD schemas (vendored in
schemas/, generate.py says from where), and checkov with no failed check (each skip is annotated
on its resource with the reason)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from tests.deploy.files import DOCKERFILE, ROOT

K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).parent / "schemas"
KUSTOMIZATIONS = {"default": K8S, "keda": K8S / "keda", "kserve": K8S / "kserve"}
# the oldest and the newest Kubernetes kubernetes-validate carries (autoscaling/v2 needs 1.23)
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
CRDS = {
    "ScaledObject": "keda.sh_v1alpha1_scaledobject.json",
    "InferenceService": "serving.kserve.io_v1beta1_inferenceservice.json",
    "ServingRuntime": "serving.kserve.io_v1alpha1_servingruntime.json",
}
KUBECTL = shutil.which("kubectl")
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"  # its own venv (scripts/setup.sh)
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not installed: apt-get install kubernetes-client (setup.sh)"
)


@cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    """The documents `kubectl kustomize` renders for one kustomization."""
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def kinds(name: str) -> list[str]:
    return sorted(d["kind"] for d in rendered(name))


def the(name: str, kind: str) -> dict[str, Any]:
    [doc] = [d for d in rendered(name) if d["kind"] == kind]
    return doc


@needs_kubectl
def test_each_kustomization_renders_what_it_promises() -> None:
    base = ["Deployment", "Namespace", "NetworkPolicy", "PersistentVolumeClaim"]
    base += ["PodDisruptionBudget", "Service"]
    assert kinds("default") == sorted([*base, "HorizontalPodAutoscaler"])
    assert kinds("keda") == sorted([*base, "ScaledObject"])  # never two autoscalers
    assert kinds("kserve") == ["InferenceService", "PersistentVolumeClaim", "ServingRuntime"]
    for name in KUSTOMIZATIONS:
        assert {d["metadata"].get("namespace") for d in rendered(name) if d["kind"] != "Namespace"}
        assert {d["metadata"].get("namespace") for d in rendered(name)} <= {"bap", None}


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kubernetes_resources_pass_the_strict_schemas(name: str, version: str) -> None:
    for doc in rendered(name):
        if doc["kind"] not in CRDS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any error


@cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / CRDS[kind]).read_text())
    # KServe's schemas point at Kubernetes' own types in kubernetes-validate's definitions
    newest = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    defs = newest / f"v{kubernetes_validate.latest_version()}-local-strict" / "_definitions.json"
    registry = Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json",
        Resource.from_contents(json.loads(defs.read_text())),
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


@needs_kubectl
@pytest.mark.parametrize(
    ("name", "kind"),
    [("keda", "ScaledObject"), ("kserve", "InferenceService"), ("kserve", "ServingRuntime")],
)
def test_custom_resources_pass_their_crd_schemas(name: str, kind: str) -> None:
    errors = [e.message for e in crd_validator(kind).iter_errors(the(name, kind))]
    assert errors == []


def test_crd_schemas_refuse_what_the_crds_refuse() -> None:
    """The vendored schemas are strict: an unknown field or a wrong type fails."""
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"}}
    trigger = {"type": "cpu", "metadata": {}}
    good = scaled | {"spec": {"scaleTargetRef": {"name": "x"}, "triggers": [trigger]}}
    assert crd_validator("ScaledObject").is_valid(good)
    assert not crd_validator("ScaledObject").is_valid(good | {"spec": {"triggers": []}})
    typo = {"scaleTargetRef": {"name": "x"}, "triggers": [], "minReplicas": 2}
    assert not crd_validator("ScaledObject").is_valid(scaled | {"spec": typo})
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService"}
    container = {"name": "c", "image": "i", "ports": [{"containerPort": "8080"}]}
    bad = isvc | {"spec": {"predictor": {"containers": [container]}}}
    assert not crd_validator("InferenceService").is_valid(bad)  # a Kubernetes type, checked too


@needs_kubectl
def test_deployment_runs_as_the_images_user_with_probes_on_our_endpoints() -> None:
    uid = int(re.search(r"--uid (\d+)", DOCKERFILE.read_text())[1])  # type: ignore[index]
    pod = the("default", "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    probes = {p: container[p]["httpGet"]["path"] for p in kinds}
    assert probes == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    store = volumes[mounts["/store"]]["persistentVolumeClaim"]["claimName"]
    assert store == the("default", "PersistentVolumeClaim")["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BAP_STORE"] == "/store"
    assert env["BAP_PORT"] == str(container["ports"][0]["containerPort"])


@needs_kubectl
def test_keda_scales_on_metrics_the_server_exports() -> None:
    from server.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    triggers = the("keda", "ScaledObject")["spec"]["triggers"]
    [prometheus] = [t for t in triggers if t["type"] == "prometheus"]
    used = set(re.findall(r"\b(bap_\w+)", prometheus["metadata"]["query"]))
    # counters are exported as <name>_total; the registry names them without the suffix
    assert (
        {u.removesuffix("_total") for u in used}
        == {
            "bap_inference_busy_seconds",
            "bap_inference_workers",
        }
        <= exported
    )


@needs_kubectl
@pytest.mark.skipif(not CHECKOV.exists(), reason=f"checkov not installed at {CHECKOV} (setup.sh)")
def test_checkov_finds_no_failed_check(tmp_path: Path) -> None:
    for name in KUSTOMIZATIONS:
        docs = yaml.safe_dump_all(list(rendered(name)))
        (tmp_path / f"{name}.yaml").write_text(docs)
    run = subprocess.run(
        [str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes"]
        + ["--skip-download", "--output", "json"],  # offline: no Prisma Cloud guidelines
        capture_output=True,
        text=True,
    )
    report = json.loads(run.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    skipped = report["results"]["skipped_checks"]
    assert skipped and all(c["check_result"].get("suppress_comment") for c in skipped)
