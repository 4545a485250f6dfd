"""The deployment files parse and agree with each other (no Docker engine runs here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((REPO / relative).read_text())


def test_compose_has_the_service_prometheus_and_grafana() -> None:
    compose = load_yaml("docker-compose.yml")
    assert {"topk", "prometheus", "grafana"} <= set(compose["services"])
    assert compose["services"]["topk"]["build"]["context"] == "."


def test_compose_bind_mounts_point_at_files_in_the_repo() -> None:
    compose = load_yaml("docker-compose.yml")
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_the_compose_service_on_its_port() -> None:
    config = load_yaml("deploy/prometheus/prometheus.yml")
    compose = load_yaml("docker-compose.yml")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "topk-service"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for block in job["static_configs"] for t in block["targets"]]
    assert targets == ["topk:8000"]
    published = compose["services"]["topk"]["ports"][0]
    assert published.endswith(":8000"), "the container port must match the scrape target"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder() -> None:
    datasources = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = load_yaml("deploy/grafana/provisioning/dashboards/topk.yml")
    (provider,) = providers["providers"]
    compose = load_yaml("docker-compose.yml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_cache_volume() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, flags=re.M)) >= 2
    uid = re.search(r"useradd .*--uid (\d+) .*topk", dockerfile)
    assert uid is not None, "the image's user needs a fixed uid"
    assert re.search(rf"^USER {uid.group(1)}:\d+$", dockerfile, flags=re.M), "USER must be numeric"
    assert re.search(r"^HEALTHCHECK .*", dockerfile, flags=re.M)
    assert "/healthz" in dockerfile
    assert "ARG JAX_EXTRA" in dockerfile
    cache_dir = re.search(r"TOPK_COMPILATION_CACHE_DIR=(\S+)", dockerfile)
    assert cache_dir is not None
    assert f'VOLUME ["{cache_dir.group(1)}"]' in dockerfile


def test_the_cuda_image_installs_the_cuda_extra_at_the_locked_jax() -> None:
    """``JAX_EXTRA=cuda``: the ``cuda`` extra's wheels (jax[cuda12]) at the jax version the lock
    installed, within the same bounds as the core dependency; no other value builds."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (cuda,) = (Requirement(text) for text in project["optional-dependencies"]["cuda"])
    (jax,) = (Requirement(t) for t in project["dependencies"] if Requirement(t).name == "jax")
    assert cuda.name == "jax" and cuda.extras == {"cuda12"} and cuda.specifier == jax.specifier
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'cuda) /opt/venv/bin/pip install "jax[cuda12]==$(' in dockerfile
    assert "import jax; print(jax.__version__)" in dockerfile  # the version the lock installed
    assert "JAX_EXTRA must be '' or 'cuda'" in dockerfile
    assert "cuda12" not in re.sub(r"jax\[cuda12\]", "", dockerfile)  # the old argument value
    for path in ("README.md", "deploy/README.md", "docker-compose.yml"):
        assert "JAX_EXTRA=cuda12" not in (REPO / path).read_text(), path


def test_grafana_admin_password_is_required_from_the_environment() -> None:
    """No default password ships: compose stops with an error unless GRAFANA_ADMIN_PASSWORD is set."""
    environment = load_yaml("docker-compose.yml")["services"]["grafana"]["environment"]
    password = environment["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    for name, value in environment.items():
        if "PASSWORD" in name or "SECRET" in name:
            assert str(value).startswith("${"), f"{name} is a literal in docker-compose.yml"
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".env" in ignored, "an .env holding the password must not be committed"
