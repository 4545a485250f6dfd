"""Offline validation of the Kubernetes and KServe manifests under ``deploy/``.

Core kinds go through ``kubernetes-validate`` (the Kubernetes OpenAPI schemas it ships, strict:
unknown fields are errors). It only warns on kinds it has no schema for, so custom resources
(KServe's ServingRuntime and InferenceService, the Prometheus Operator's ServiceMonitor) and
kustomize's Kustomization get structural schemas written here: every object this repository
uses is closed (``additionalProperties: false``) and lists the fields of its API that we rely on,
while the core types nested in them (Container, Volume, PodSecurityContext, ObjectMeta...) are
checked against the same strict Kubernetes definitions. A kind known to neither is an error.

Overlays are built by :func:`build` (resources, ``images`` and strategic-merge ``patches``, the
subset of kustomize these files use), so what is validated is what ``kubectl apply -k`` sends.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
KSERVE = REPO / "deploy" / "kserve"
# Oldest release the manifests support (lifecycle.preStop.sleep, native sidecars), and the newest
# whose schemas kubernetes-validate ships in its lowest allowed version (pyproject.toml).
KUBERNETES_VERSIONS = ("1.30", "1.34")
DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
IMAGE = "topk-service"  # the image name the manifests use (kustomize `images` retags it)

Manifest = dict[str, Any]


def load(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def core(name: str) -> dict[str, str]:
    """A reference to a strict Kubernetes definition, e.g. ``core("core.v1.Container")``."""
    prefix = "io.k8s.apimachinery.pkg.apis." if name.startswith("meta.") else "io.k8s.api."
    return {"$ref": f"{DEFINITIONS}#/$defs/{prefix}{name}"}


def closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}


def resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return closed(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": core("meta.v1.ObjectMeta"),
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


# KServe serving.kserve.io/v1alpha1 ServingRuntime: ServingRuntimeSpec with its inlined
# ServingRuntimePodSpec (pkg/apis/serving/v1alpha1/servingruntime_types.go).
SERVING_RUNTIME = resource(
    "serving.kserve.io/v1alpha1",
    "ServingRuntime",
    closed(
        {
            "supportedModelFormats": {
                "type": "array",
                "minItems": 1,
                "items": closed(
                    {
                        "name": {"type": "string", "minLength": 1},
                        "version": {"type": "string"},
                        "autoSelect": {"type": "boolean"},
                        "priority": {"type": "integer", "minimum": 1},
                    },
                    ("name",),
                ),
            },
            "protocolVersions": {
                "type": "array",
                "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
            },
            "multiModel": {"type": "boolean"},
            "disabled": {"type": "boolean"},
            "containers": {"type": "array", "minItems": 1, "items": core("core.v1.Container")},
            "volumes": {"type": "array", "items": core("core.v1.Volume")},
            "nodeSelector": STRING_MAP,
            "affinity": core("core.v1.Affinity"),
            "tolerations": {"type": "array", "items": core("core.v1.Toleration")},
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
            "imagePullSecrets": {"type": "array", "items": core("core.v1.LocalObjectReference")},
        },
        ("containers", "supportedModelFormats"),
    ),
)

# KServe serving.kserve.io/v1beta1 InferenceService with a `model` predictor: PredictorSpec =
# ModelSpec + the inlined PodSpec copy + ComponentExtensionSpec (pkg/apis/serving/v1beta1).
# The pod-level fields listed are those of corev1.PodSpec that this repository sets.
_MODEL = closed(
    {
        "modelFormat": closed(
            {"name": {"type": "string"}, "version": {"type": "string"}}, ("name",)
        ),
        "runtime": {"type": "string"},
        "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
        "storageUri": {"type": "string"},
        "runtimeVersion": {"type": "string"},
        # the inlined corev1.Container overrides (resources, env, args...)
        "resources": core("core.v1.ResourceRequirements"),
        "env": {"type": "array", "items": core("core.v1.EnvVar")},
        "args": {"type": "array", "items": {"type": "string"}},
    },
    ("modelFormat",),
)
INFERENCE_SERVICE = resource(
    "serving.kserve.io/v1beta1",
    "InferenceService",
    closed(
        {
            "predictor": closed(
                {
                    "model": _MODEL,
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                    "scaleTarget": {"type": "integer", "minimum": 1},
                    "containerConcurrency": {"type": "integer", "minimum": 0},
                    "timeout": {"type": "integer", "minimum": 1},
                    "labels": STRING_MAP,
                    "annotations": STRING_MAP,
                    "deploymentStrategy": core("apps.v1.DeploymentStrategy"),
                    "enableServiceLinks": {"type": "boolean"},
                    "automountServiceAccountToken": {"type": "boolean"},
                    "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
                    "securityContext": core("core.v1.PodSecurityContext"),
                    "serviceAccountName": {"type": "string"},
                    "nodeSelector": STRING_MAP,
                    "tolerations": {"type": "array", "items": core("core.v1.Toleration")},
                    "volumes": {"type": "array", "items": core("core.v1.Volume")},
                },
                ("model",),
            ),
        },
        ("predictor",),
    ),
)

# Prometheus Operator monitoring.coreos.com/v1 ServiceMonitor (the fields used, and a few more).
SERVICE_MONITOR = resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    closed(
        {
            "selector": core("meta.v1.LabelSelector"),
            "namespaceSelector": closed(
                {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                }
            ),
            "jobLabel": {"type": "string"},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": closed(
                    {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                        "honorLabels": {"type": "boolean"},
                    },
                    ("port",),
                ),
            },
        },
        ("selector", "endpoints"),
    ),
)

# kustomize's kustomize.config.k8s.io/v1beta1 Kustomization (the fields used).
KUSTOMIZATION = closed(
    {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "namespace": {"type": "string"},
        "resources": {"type": "array", "items": {"type": "string"}},
        "images": {
            "type": "array",
            "items": closed(
                {
                    "name": {"type": "string"},
                    "newName": {"type": "string"},
                    "newTag": {"type": "string"},
                    "digest": {"type": "string"},
                },
                ("name",),
            ),
        },
        "patches": {"type": "array", "items": closed({"path": {"type": "string"}}, ("path",))},
    },
    ("apiVersion", "kind", "resources"),
)

# prometheus-adapter's configuration file (docs/config.md): the discovery rules.
ADAPTER_CONFIG = closed(
    {
        "rules": {
            "type": "array",
            "minItems": 1,
            "items": closed(
                {
                    "seriesQuery": {"type": "string"},
                    "seriesFilters": {"type": "array"},
                    "resources": closed(
                        {
                            "overrides": {
                                "type": "object",
                                "additionalProperties": closed(
                                    {"group": {"type": "string"}, "resource": {"type": "string"}},
                                    ("resource",),
                                ),
                            },
                            "template": {"type": "string"},
                        }
                    ),
                    "name": closed({"matches": {"type": "string"}, "as": {"type": "string"}}),
                    "metricsQuery": {"type": "string"},
                },
                ("seriesQuery", "resources", "metricsQuery"),
            ),
        }
    },
    ("rules",),
)

CUSTOM_KINDS: dict[tuple[str, str], dict[str, Any]] = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): SERVING_RUNTIME,
    ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): KUSTOMIZATION,
}


@cache
def _registry(version: str) -> referencing.Registry[Any]:
    """The strict Kubernetes definitions that kubernetes-validate ships, for ``$ref``s."""
    folder = f"v{version}.0-local-strict"
    path = resources.files(kubernetes_validate) / "kubernetes-json-schema" / folder
    definitions = json.loads((path / "_definitions.json").read_text())
    resource = referencing.Resource.from_contents(
        definitions, default_specification=referencing.jsonschema.DRAFT202012
    )
    return referencing.Registry().with_resource(DEFINITIONS, resource)


def validate_custom(schema: dict[str, Any], document: Any, version: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` fits ``schema``."""
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(version))
    validator.validate(document)


def validate(document: Manifest, version: str) -> None:
    """Validate one object of any kind used here; unknown kinds are an error, not a warning."""
    key = (document.get("apiVersion", ""), document.get("kind", ""))
    if key in CUSTOM_KINDS:
        validate_custom(CUSTOM_KINDS[key], document, version)
        return
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        raise AssertionError(f"no schema for {key}: add one to tests/deploy/manifests.py") from None


# ------------------------------------------------------------------ a small kustomize build

# Lists that strategic merge merges by key (Kubernetes' patchMergeKey); other lists are replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value, key) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = list(base)
        for item in patch:
            index = next((i for i, old in enumerate(base) if old[key] == item[key]), None)
            if index is None:
                merged_list.append(item)
            else:
                merged_list[index] = strategic_merge(base[index], item)
        return merged_list
    return copy.deepcopy(patch)


def _retag(document: Manifest, images: list[dict[str, str]]) -> None:
    for pod in pod_specs(document):
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].partition(":")
            for image in images:
                if image["name"] == name:
                    new_name = image.get("newName", name)
                    container["image"] = f"{new_name}:{image.get('newTag', tag or 'latest')}"


def build(folder: Path) -> list[Manifest]:
    """``kustomize build folder`` for the features these files use."""
    kustomization = load(folder / "kustomization.yaml")[0]
    documents: list[Manifest] = []
    for entry in kustomization["resources"]:
        path = (folder / entry).resolve()
        documents += build(path) if path.is_dir() else copy.deepcopy(load(path))
    for patch_entry in kustomization.get("patches", []):
        (patch,) = load(folder / patch_entry["path"])
        targets = [
            i
            for i, d in enumerate(documents)
            if (d["kind"], d["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert len(targets) == 1, f"patch {patch_entry['path']} matches {len(targets)} objects"
        documents[targets[0]] = strategic_merge(documents[targets[0]], patch)
    for document in documents:
        _retag(document, kustomization.get("images", []))
    return documents


# ------------------------------------------------------------------ finding things in objects


def pod_specs(document: Manifest) -> list[dict[str, Any]]:
    """The pod-level specs of an object (Deployment template, Pod, KServe runtime/predictor)."""
    kind, spec = document.get("kind"), document.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [spec["template"]["spec"]]
    if kind in ("Pod", "ServingRuntime"):
        return [spec]
    if kind == "InferenceService":
        return [spec["predictor"]]
    return []


def topk_containers(document: Manifest) -> list[dict[str, Any]]:
    """Every container of the object that runs this service's image."""
    return [
        container
        for pod in pod_specs(document)
        for container in pod.get("containers", []) + pod.get("initContainers", [])
        if container.get("image", "").split(":")[0].rsplit("/", 1)[-1] == IMAGE
    ]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}
