"""The README's examples never rot: every ``curl`` command in it runs against a live server and
its answer is checked against the ``#`` lines under it; every route has one; the gRPC example in
Python runs and prints what its comments say."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.serving import ServerThread

README = (Path(__file__).parents[2] / "README.md").read_text()
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)
HTTP_ADDRESS, GRPC_ADDRESS = "localhost:8000", "localhost:8001"


def blocks(language: str) -> list[str]:
    return [body for tag, body in BLOCK.findall(README) if tag == language]


def _complete(command: str) -> bool:
    """Whether ``command`` is a whole shell command (no open quote, no trailing backslash)."""
    if command.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:  # an unclosed quote: the command goes on
        return False
    return True


def curl_examples() -> list[tuple[str, str]]:
    """(command, expected answer) for every ``curl`` command of the README's bash blocks."""
    examples = []
    for block in blocks("bash"):
        lines = block.splitlines()
        index = 0
        while index < len(lines):
            if not lines[index].startswith("curl "):
                index += 1
                continue
            command = [lines[index]]
            while not _complete("\n".join(command)):
                index += 1
                command.append(lines[index])
            index += 1
            expected = []
            while index < len(lines) and lines[index].startswith("#"):
                expected.append(lines[index][1:].strip())
                index += 1
            examples.append(("\n".join(command), " ".join(expected)))
    return examples


EXAMPLES = curl_examples()


def contains(answer: Any, shown: Any) -> bool:
    """Whether ``answer`` holds what ``shown`` shows: objects may leave keys out, lists may not
    leave items out, other values are equal."""
    if isinstance(shown, dict):
        return isinstance(answer, dict) and all(
            key in answer and contains(answer[key], value) for key, value in shown.items()
        )
    if isinstance(shown, list):
        return (
            isinstance(answer, list)
            and len(answer) == len(shown)
            and all(contains(a, s) for a, s in zip(answer, shown, strict=True))
        )
    return type(answer) is type(shown) and answer == shown


def test_the_readme_has_curl_examples_each_with_its_answer() -> None:
    assert len(EXAMPLES) >= 20
    for command, expected in EXAMPLES:
        assert expected, f"no answer under {command!r}"


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c.split("\n")[0][:70] for c, _ in EXAMPLES])  # fmt: skip
def test_a_curl_example_answers_what_the_readme_shows(
    server: ServerThread, command: str, expected: str
) -> None:
    local = command.replace(HTTP_ADDRESS, f"127.0.0.1:{server.port}")
    run = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + local],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    try:
        shown = json.loads(expected)
    except ValueError:
        assert expected in run.stdout
    else:
        answer = json.loads(run.stdout)
        assert contains(answer, shown), f"{run.stdout} does not contain {expected}"


def test_every_route_has_a_curl_example(http: httpx.Client) -> None:
    routes = [*http.get("/openapi.json").json()["paths"], "/docs"]
    paths = [
        match
        for command, _ in EXAMPLES
        for match in re.findall(re.escape(HTTP_ADDRESS) + r"(/[^\s'\"|]*)", command)
    ]
    for route in routes:
        pattern = re.compile(re.sub(r"\\\{\w+\\\}", "[a-z]+", re.escape(route)) + "$")
        assert any(pattern.match(path) for path in paths), f"no curl example for {route}"


def test_the_grpc_example_prints_what_it_says(server: ServerThread) -> None:
    [example] = [block for block in blocks("python") if "tritonclient.grpc" in block]
    shown = [line.split("#", 1)[1].strip() for line in example.splitlines() if line.startswith("print(")]  # fmt: skip
    code = example.replace(GRPC_ADDRESS, server.grpc_url)
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == shown
