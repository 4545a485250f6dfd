"""The lock files agree with pyproject.toml's bounds, what ships is pinned exactly as what is
tested, and this environment was installed from them (``make install``, the Docker image)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*(.+))?$")


def pins(name: str) -> dict[str, str]:
    """The versions a lock file pins for this interpreter and platform (markers evaluated)."""
    found: dict[str, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        match = PIN.match(line.strip())
        if match is None:
            continue
        package, version, marker = match.groups()
        if marker is None or Requirement(f"x; {marker}").marker.evaluate():  # type: ignore[union-attr]
            found[canonicalize_name(package)] = version
    return found


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in extras:
        listed += project["optional-dependencies"][extra]
    own = canonicalize_name(project["name"])
    requirements = [Requirement(text) for text in listed]
    return [r for r in requirements if canonicalize_name(r.name) != own]


def test_every_declared_dependency_is_pinned_within_its_bounds() -> None:
    environment = {**default_environment(), "extra": ""}
    for lock, extras in (("requirements.lock", ("grpc",)), ("requirements-dev.lock", ("dev",))):
        pinned = pins(lock)
        for requirement in declared(*extras):
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            name = canonicalize_name(requirement.name)
            assert name in pinned, f"{lock} does not pin {name}: run `make lock`"
            assert requirement.specifier.contains(pinned[name], prereleases=True), (
                f"{lock} pins {name}=={pinned[name]}, outside {requirement.specifier}"
            )


def test_what_ships_is_pinned_as_what_is_tested() -> None:
    shipped, tested = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {"jax", "jaxlib", "uvicorn", "fastapi", "numpy", "grpcio"} <= shipped.keys()
    different = {n: (v, tested.get(n)) for n, v in shipped.items() if tested.get(n) != v}
    assert not different, f"requirements.lock and requirements-dev.lock differ: {different}"


def test_this_environment_was_installed_from_the_lock() -> None:
    tested = pins("requirements-dev.lock")
    different = {}
    for name, version in tested.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            different[name] = (version, installed)
    assert not different, (
        f"installed versions differ from the lock (run `make install`): {different}"
    )


def test_the_image_installs_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-r requirements.lock" in dockerfile
    assert "--no-deps" in dockerfile
