"""Every Kubernetes and KServe manifest in deploy/ validates offline, strictly, and the checks
are real: a misspelt field fails each kind of validator (see tests/deploy/manifests.py)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.manifests import (
    ADAPTER_CONFIG,
    KSERVE,
    KUBERNETES,
    KUBERNETES_VERSIONS,
    REPO,
    build,
    load,
    validate,
    validate_custom,
)


def patch_files() -> set[Path]:
    """Files that kustomizations use as patches: partial objects, checked once built."""
    return {
        (kustomization.parent / patch["path"]).resolve()
        for kustomization in KUBERNETES.rglob("kustomization.yaml")
        for patch in load(kustomization)[0].get("patches", [])
    }


def manifest_files() -> list[Path]:
    files = sorted([*KUBERNETES.rglob("*.yaml"), *KSERVE.rglob("*.yaml")])
    return [path for path in files if path.resolve() not in patch_files()]


def test_every_deploy_folder_has_manifests() -> None:
    names = {path.relative_to(REPO).as_posix() for path in manifest_files()}
    for expected in (
        "deploy/kubernetes/base/deployment.yaml",
        "deploy/kubernetes/base/service.yaml",
        "deploy/kubernetes/base/hpa.yaml",
        "deploy/kubernetes/base/pdb.yaml",
        "deploy/kubernetes/base/servicemonitor.yaml",
        "deploy/kubernetes/overlays/gpu/kustomization.yaml",
        "deploy/kubernetes/prometheus-adapter/config.yaml",
        "deploy/kubernetes/sidecar/pod.yaml",
        "deploy/kserve/servingruntime.yaml",
        "deploy/kserve/inferenceservice.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_manifest_validates_offline(path: Path, version: str) -> None:
    documents = load(path)
    assert documents, f"{path} holds no object"
    for document in documents:
        validate(document, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_kustomize_builds_validate(overlay: str, version: str) -> None:
    documents = build(KUBERNETES / overlay)
    assert {d["kind"] for d in documents} >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for document in documents:
        validate(document, version)


def test_the_prometheus_adapter_rules_validate() -> None:
    (config_map,) = load(KUBERNETES / "prometheus-adapter" / "config.yaml")
    validate_custom(ADAPTER_CONFIG, yaml.safe_load(config_map["data"]["config.yaml"]), "1.30")


def _misspelt(document: dict[str, Any], path: list[str | int], wrong: str) -> dict[str, Any]:
    """``document`` with the last key of ``path`` renamed to ``wrong``."""
    broken = copy.deepcopy(document)
    node: Any = broken
    for step in path[:-1]:
        node = node[step]
    node[wrong] = node.pop(path[-1])
    return broken


@pytest.mark.parametrize(
    ("file", "path", "wrong"),
    [
        (
            "kubernetes/base/deployment.yaml",
            ["spec", "template", "spec", "containers", 0, "image"],
            "imagee",
        ),
        ("kubernetes/base/hpa.yaml", ["spec", "minReplicas"], "minReplica"),
        (
            "kserve/inferenceservice.yaml",
            ["spec", "predictor", "model", "modelFormat"],
            "modelFormt",
        ),
        (
            "kserve/servingruntime.yaml",
            ["spec", "containers", 0, "readinessProbe"],
            "readinesProbe",
        ),
        ("kserve/servingruntime.yaml", ["spec", "protocolVersions"], "protocolVersion"),
        ("kubernetes/base/servicemonitor.yaml", ["spec", "endpoints", 0, "port"], "targetPort"),
        ("kubernetes/base/kustomization.yaml", ["resources"], "resource"),
    ],
)
def test_a_misspelt_field_fails_validation(file: str, path: list[str | int], wrong: str) -> None:
    (document,) = load(REPO / "deploy" / file)
    validate(document, "1.30")  # the original passes
    with pytest.raises(jsonschema.ValidationError):
        validate(_misspelt(document, path, wrong), "1.30")


def test_a_wrong_value_fails_the_custom_schemas() -> None:
    (service,) = load(KSERVE / "inferenceservice.yaml")
    service["spec"]["predictor"]["model"]["protocolVersion"] = "grpc-v3"
    with pytest.raises(jsonschema.ValidationError):
        validate(service, "1.30")
    (runtime,) = load(KSERVE / "servingruntime.yaml")
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"  # a core type, nested
    with pytest.raises(jsonschema.ValidationError):
        validate(runtime, "1.30")


def test_an_unknown_kind_is_an_error_not_a_warning() -> None:
    with pytest.raises(AssertionError, match="no schema"):
        validate(
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, "1.30"
        )


def test_kubernetes_validate_command_is_strict_and_offline(tmp_path: Path) -> None:
    """The command line as a person would run it (its schemas ship with the package; this
    test does not depend on the network): rc 0 on the manifest, 1 on a misspelt copy."""
    command = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert command is not None
    manifest = KUBERNETES / "base" / "deployment.yaml"
    ok = subprocess.run(
        [command, "--strict", "-k", "1.30", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "deployment.yaml"
    broken.write_text(manifest.read_text().replace("imagePullPolicy:", "imagePullPolicyy:"))
    failed = subprocess.run(
        [command, "--strict", "-k", "1.30", "--quiet", str(broken)], capture_output=True, text=True
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "imagePullPolicyy" in failed.stdout + failed.stderr
