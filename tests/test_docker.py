"""The deployment files: no Docker engine runs here, so they are checked as data, and by
`docker compose config` where the compose client is installed."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pomstream.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_wait_for_a_healthy_redis(compose):
    services = compose["services"]
    assert {"redis", "api", "worker", "worker-cpu"} <= set(services)
    assert "healthcheck" in services["redis"] and "healthcheck" in services["api"]
    assert "--appendonly" in services["redis"]["command"]  # jobs and snapshots survive
    for name in ("api", "worker", "worker-cpu"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "videos:/data/videos" in services[name]["volumes"]
    assert set(compose["volumes"]) == {"redis-data", "videos"}


def test_worker_reserves_a_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    command = compose["services"]["worker"]["command"]
    assert command[command.index("--device") + 1] == "cuda"
    assert command[command.index("--metrics-port") + 1] == "9100"  # scraped in the network
    assert compose["services"]["worker"]["expose"] == ["9100"]
    assert compose["services"]["worker-cpu"]["profiles"] == ["cpu"]


def test_secrets_are_required_not_defaulted():
    text = COMPOSE.read_text()
    for var in ("REDIS_PASSWORD", "POMSTREAM_API_KEYS"):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (var, uses)


def test_commands_are_real_cli_commands(compose):
    parser = build_parser()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    commands = [yaml.safe_load(cmd.group(1))] + [
        s["command"] for s in compose["services"].values() if s["command"][0] == "pomstream"]
    for argv in commands:
        assert argv[0] == "pomstream"
        parser.parse_args(argv[1:])  # exits (fails the test) on an unknown flag


def has_compose_client() -> bool:
    return bool(shutil.which("docker")) and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not has_compose_client(), reason="the docker compose client is not installed")
def test_docker_compose_config(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": "x", "POMSTREAM_API_KEYS": "k"}
    res = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                         cwd=ROOT)
    assert res.returncode != 0 and "REDIS_PASSWORD" in res.stderr
