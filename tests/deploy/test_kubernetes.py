"""What the manifests say agrees with the service and with each other: probe paths the app
answers, ports and settings the server reads, a grace period that covers the drain, selectors
that select, an autoscaler metric that the adapter serves and the app exposes, one GPU per pod."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import yaml

from service import Settings, create_app
from tests.deploy.manifests import (
    KSERVE,
    KUBERNETES,
    REPO,
    Manifest,
    build,
    env,
    load,
    pod_specs,
    topk_containers,
)
from tests.deploy.test_dashboard_metrics import exposed_metric_names

# Every setting the manifests use exists now (issue 15 drain delay, issue 17 gRPC port).
PENDING_SETTINGS: set[str] = set()
DEFAULT_GRACEFUL_TIMEOUT_S = 20.0  # python -m service --graceful-timeout
SLACK_S = 5


def every_manifest() -> list[tuple[str, Manifest]]:
    """Each object that runs: the built kustomizations, the sidecar Pod and the KServe files."""
    named: list[tuple[str, Manifest]] = []
    for overlay in ("base", "overlays/gpu"):
        named += [(f"{overlay}/{d['kind']}", d) for d in build(KUBERNETES / overlay)]
    for path in [KUBERNETES / "sidecar" / "pod.yaml", *sorted(KSERVE.glob("*.yaml"))]:
        named += [(path.name, d) for d in load(path)]
    return named


def by_kind(documents: list[Manifest], kind: str, name: str = "topk-service") -> Manifest:
    (found,) = [d for d in documents if (d["kind"], d["metadata"]["name"]) == (kind, name)]
    return found


BASE = build(KUBERNETES / "base")
GPU = build(KUBERNETES / "overlays" / "gpu")
(SIDECAR,) = load(KUBERNETES / "sidecar" / "pod.yaml")
(RUNTIME,) = load(KSERVE / "servingruntime.yaml")
(INFERENCE_SERVICE,) = load(KSERVE / "inferenceservice.yaml")
RUNNING = [d for _, d in every_manifest() if topk_containers(d)]


def all_topk_containers() -> list[dict[str, Any]]:
    return [c for d in RUNNING for c in topk_containers(d)]


def graceful_timeout(container: dict[str, Any]) -> float:
    args = container.get("args", [])
    if "--graceful-timeout" in args:
        return float(args[args.index("--graceful-timeout") + 1])
    return DEFAULT_GRACEFUL_TIMEOUT_S


def test_every_pod_running_the_service_is_covered() -> None:
    kinds = sorted(d["kind"] for d in RUNNING)
    assert kinds == ["Deployment", "Deployment", "Pod", "ServingRuntime"]


def test_topk_settings_are_real_and_valid() -> None:
    """The server refuses unknown TOPK_* variables at start-up, so a typo would crash the pod."""
    fields = {"TOPK_" + name.upper() for name in Settings.model_fields}
    for container in all_topk_containers():
        variables = {k: v for k, v in env(container).items() if k.startswith("TOPK_")}
        unknown = set(variables) - fields - PENDING_SETTINGS
        assert not unknown, f"{container['name']}: unknown settings {unknown}"
        known = {k: v for k, v in variables.items() if k in fields}
        Settings.from_env(known)  # raises on a bad value


def test_service_links_are_off_where_the_service_runs() -> None:
    """A Service named topk-* injects TOPK_*_PORT=tcp://... variables. The server ignores them
    (they are not settings), and the manifests turn service links off anyway: fewer variables,
    and no reliance on that rule."""
    settings = Settings.from_env({"TOPK_SERVICE_PORT": "8000", "TOPK_PORT": "tcp://10.0.0.1:8000"})
    assert settings.port == 8000
    for document in [*RUNNING, INFERENCE_SERVICE]:
        if document["kind"] == "ServingRuntime":
            continue  # no pod-level fields: the InferenceService sets them
        for pod in pod_specs(document):
            assert pod.get("enableServiceLinks") is False, document["metadata"]["name"]


def test_ports_agree_with_the_settings_and_the_service() -> None:
    for container in all_topk_containers():
        variables = env(container)
        ports = {p["containerPort"]: p.get("name") for p in container.get("ports", [])}
        if container["name"] == "topk-service" and "restartPolicy" in container:
            assert (
                variables["TOPK_HOST"] == "127.0.0.1" and not ports
            )  # the sidecar: localhost only
            continue
        assert variables["TOPK_HOST"] == "0.0.0.0"
        assert int(variables["TOPK_PORT"]) in ports
        assert int(variables["TOPK_GRPC_PORT"]) in ports
        assert "grpc" in ports[int(variables["TOPK_GRPC_PORT"])]
    deployment, service = by_kind(BASE, "Deployment"), by_kind(BASE, "Service")
    pod = deployment["spec"]["template"]
    container_ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {p["targetPort"] for p in service_ports.values()} <= set(container_ports)
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == container_ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_selectors_select_the_pods() -> None:
    for documents in (BASE, GPU):
        deployment = by_kind(documents, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selected = deployment["spec"]["selector"]["matchLabels"]
        service = by_kind(documents, "Service")
        budget = by_kind(documents, "PodDisruptionBudget")
        monitor = by_kind(documents, "ServiceMonitor")
        autoscaler = by_kind(documents, "HorizontalPodAutoscaler")
        for selector in (
            selected,
            service["spec"]["selector"],
            budget["spec"]["selector"]["matchLabels"],
        ):
            assert selector.items() <= labels.items()
        services = [d for d in documents if d["kind"] == "Service"]
        watched = [
            d
            for d in services
            if monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
        ]
        assert watched == [service], "the ServiceMonitor must scrape each pod through one Service"
        headless = by_kind(documents, "Service", "topk-service-headless")
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"].items() <= labels.items()
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for p in service["spec"]["ports"]
        }
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
        assert autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]


def probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: container[name]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
        if name in container
    }


def app_statuses(paths: set[str]) -> dict[str, int]:
    """What the app answers on each path before its warm-up (no lifespan: not ready)."""
    app = create_app(Settings.from_env({}, compilation_cache_dir=""))

    async def ask() -> dict[str, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            return {path: (await client.get(path)).status_code for path in paths}

    return asyncio.run(ask())


def test_probes_ask_the_right_questions() -> None:
    """Readiness and startup ask "warm and not draining" (503 before the warm-up), liveness asks
    only "alive" (200 at once), and every path is one the app serves."""
    paths: dict[str, set[str]] = {
        "startupProbe": set(),
        "readinessProbe": set(),
        "livenessProbe": set(),
    }
    for container in all_topk_containers():
        found = probes(container)
        assert {"startupProbe", "livenessProbe"} <= set(found), container["name"]
        for name, probe in found.items():
            if "httpGet" in probe:
                paths[name].add(probe["httpGet"]["path"])
            else:  # the sidecar's in-container probe: a URL inside the command
                (url,) = re.findall(
                    r"http://127\.0\.0\.1:\d+(/[\w/]+)", " ".join(probe["exec"]["command"])
                )
                paths[name].add(url)
    statuses = app_statuses(set().union(*paths.values()))
    for name in ("startupProbe", "readinessProbe"):
        assert paths[name] and all(statuses[p] == 503 for p in paths[name]), (name, statuses)
    assert paths["livenessProbe"] and all(statuses[p] == 200 for p in paths["livenessProbe"])


def test_the_startup_probe_covers_a_cold_warm_up() -> None:
    """A warm-up of the default ladder on an empty cache took 120 s on the 2-CPU bench machine
    (deploy/README.md); the CPU probes allow 300 s, the GPU ones 600 s."""
    for documents, budget in ((BASE, 300), (GPU, 600)):
        (container,) = topk_containers(by_kind(documents, "Deployment"))
        probe = container["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= budget


def test_termination_grace_covers_pre_stop_drain_delay_and_graceful_timeout() -> None:
    pods: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for document in RUNNING:
        if document["kind"] == "ServingRuntime":
            pod = INFERENCE_SERVICE["spec"]["predictor"]  # the grace period is set on the predictor
        else:
            (pod,) = pod_specs(document)
        pods += [(pod, container) for container in topk_containers(document)]
    for pod, container in pods:
        pre_stop = (
            container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        )
        delay = float(env(container).get("TOPK_DRAIN_DELAY_S", "5"))
        needed = pre_stop + delay + graceful_timeout(container) + SLACK_S
        assert pod["terminationGracePeriodSeconds"] >= needed, (container["name"], needed)
    (container,) = topk_containers(by_kind(BASE, "Deployment"))
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 5
    assert container["readinessProbe"]["failureThreshold"] == 1


def test_the_compilation_cache_is_on_a_volume_and_the_root_is_read_only() -> None:
    """Same path as the image everywhere: JAX (0.10) hashes the cache directory into each entry's
    key (the GPU autotune cache's path is in the compile options), so a cache filled at another
    path is never hit (measured: 0 hits of 6 from a copy, 6 of 6 in place; deploy/README.md)."""
    image_path = re.search(r"TOPK_COMPILATION_CACHE_DIR=(\S+)", (REPO / "Dockerfile").read_text())
    assert image_path is not None
    for document in RUNNING:
        volumes = {v["name"] for pod in pod_specs(document) for v in pod.get("volumes", [])}
        for container in topk_containers(document):
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert env(container)["TOPK_COMPILATION_CACHE_DIR"] == image_path.group(1)
            assert mounts[image_path.group(1)] in volumes
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert "/tmp" in mounts


def test_security_context_matches_the_image_user() -> None:
    found = re.search(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert found is not None
    uid = int(found.group(1))
    for document in [*RUNNING, INFERENCE_SERVICE]:
        for pod in pod_specs(document):
            context = pod.get("securityContext") or topk_containers(document)[0]["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] == uid
        for container in topk_containers(document):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_resources_are_requested_and_bounded() -> None:
    for container in all_topk_containers():
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert kind in resources["requests"] and kind in resources["limits"], container["name"]


def test_the_gpu_variant_is_one_process_per_gpu() -> None:
    (container,) = topk_containers(by_kind(GPU, "Deployment"))
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert container["image"] == "topk-service:cuda"
    variables = env(container)
    assert variables["JAX_PLATFORMS"] == "cuda" and variables["TOPK_DEVICES"] == "1"
    assert "--workers" not in container.get("args", [])
    (base_container,) = topk_containers(by_kind(BASE, "Deployment"))
    assert "nvidia.com/gpu" not in base_container["resources"]["limits"]
    assert base_container["image"] == "topk-service:latest"
    assert env(base_container)["JAX_PLATFORMS"] == "cpu"
    # the patch kept the base's probes, volumes and security settings
    assert container["volumeMounts"] == base_container["volumeMounts"]
    assert container["readinessProbe"] == base_container["readinessProbe"]


def test_the_queue_depth_metric_reaches_the_gpu_autoscaler() -> None:
    """GPU HPA metric == the adapter's exposed name; the adapter's series is a gauge the app
    exposes; the CPU HPA scales on CPU."""
    (config_map,) = load(KUBERNETES / "prometheus-adapter" / "config.yaml")
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    found = re.match(r"^(\w+)\{", rule["seriesQuery"])
    assert found is not None
    series = found.group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    (metric,) = by_kind(GPU, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    app = create_app(Settings.from_env({}, compilation_cache_dir=""))
    exposition = app.state.runtime.metrics.render().decode()
    assert f"# TYPE {series} gauge" in exposition
    assert series in exposed_metric_names(exposition)
    (cpu,) = by_kind(BASE, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert cpu["resource"]["name"] == "cpu"


def test_kserve_runtime_serves_the_inference_service() -> None:
    model = INFERENCE_SERVICE["spec"]["predictor"]["model"]
    spec = RUNTIME["spec"]
    assert model["runtime"] == RUNTIME["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert model["protocolVersion"] in spec["protocolVersions"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    variables = env(container)
    assert container["ports"][0]["containerPort"] == int(variables["TOPK_PORT"]) == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    annotations = INFERENCE_SERVICE["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"  # two ports need it
    # the model name clients use in /v2/models/<name>/infer is the one the server serves
    assert INFERENCE_SERVICE["metadata"]["name"] == "topk"


def test_every_manifest_is_listed_for_the_readme() -> None:
    readme = (REPO / "deploy" / "README.md").read_text()
    for path in [*KUBERNETES.rglob("*.yaml"), *KSERVE.glob("*.yaml")]:
        relative = Path(path).relative_to(REPO / "deploy").as_posix()
        assert relative in readme or Path(relative).parent.as_posix() + "/" in readme, relative
