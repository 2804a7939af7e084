"""docker-compose.yml stays valid and scalable. .ci/run installs a compose client (no engine is needed to
validate) and sets HEDGEGUARD_REQUIRE_COMPOSE=1, so CI fails rather than skips when it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compose_cmd() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if os.environ.get("HEDGEGUARD_REQUIRE_COMPOSE"):
        pytest.fail("no docker compose client (apt-get install docker-compose)")
    pytest.skip("no docker compose client installed; CI validates the file")


def test_compose_file_is_valid():
    result = subprocess.run([*compose_cmd(), "-f", "docker-compose.yml", "config"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for service in ("temporal-db:", "temporal:", "temporal-ui:", "store-db:", "worker:"):
        assert f"\n  {service}" in result.stdout
    assert "HEDGEGUARD_MODE: live" in result.stdout and "/run/secrets/hedgeguard" in result.stdout


def test_worker_service_can_be_scaled():
    text = (ROOT / "docker-compose.yml").read_text()
    worker = text.split("\n  worker:\n", 1)[1].split("\n\n", 1)[0]
    assert "container_name" not in worker and "ports:" not in worker  # either would clash between replicas
