"""The deployment files: no Docker engine runs here, so they are checked against the
Compose Specification's JSON schema (tests/support/compose-spec.json), as data, and by
`docker compose config` where the compose client is installed."""

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

from pomstream.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose_schema():
    spec = json.loads((ROOT / "tests" / "support" / "compose-spec.json").read_text())
    return jsonschema_rs.validator_for(spec)


def test_the_compose_file_follows_the_compose_specification(compose, compose_schema):
    errors = [str(e).splitlines()[0] for e in compose_schema.iter_errors(compose)]
    assert errors == []


@pytest.mark.parametrize("typo", ["healthchek", "depend_on", "volume"])
def test_a_typo_in_the_compose_file_is_caught(compose, compose_schema, typo):
    """What the schema check is for: a misspelt key would pass as mere YAML."""
    broken = copy.deepcopy(compose)
    broken["services"]["api"][typo] = broken["services"]["api"].get("healthcheck", {})
    errors = [str(e) for e in compose_schema.iter_errors(broken)]
    assert errors and typo in errors[0]


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


def _requirements() -> list[str]:
    lines = (ROOT / "docker" / "api-requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_api_image_is_built_without_torch(compose):
    """The api service builds the Dockerfile's api stage, which installs only the API's
    requirements (each as pyproject.toml states it) and pomstream with --no-deps."""
    import tomllib

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", dockerfile,
                             re.M | re.S))
    assert "torch" not in stages["api"] and "--no-deps" in stages["api"]
    assert "torch" in stages["worker"]
    for folder in ("pomstream", "model", "kernels", "media", "server", "bench"):
        assert f"COPY {folder} ./{folder}" in stages["source"], folder
    services = compose["services"]
    assert services["api"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    assert services["worker-cpu"]["build"]["target"] == "worker"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(_requirements()) <= set(deps)


def test_api_requirements_cover_what_the_api_loads(tmp_path):
    """The third-party packages the API process imports all come from the API image's
    requirements (so the image can run it)."""
    import json
    import sys

    code = (
        "import json, sys, importlib.metadata as md\n"
        "from pomstream.cli import build_parser\n"
        "from pomstream.server.roles import run_server\n"
        "from pomstream.server.http.app import create_app\n"
        "from pomstream.server.settings import Settings\n"
        "import uvicorn.protocols.websockets.websockets_sansio_impl\n"
        "create_app(Settings(redis_url='redis://127.0.0.1:1'))\n"
        "dists = md.packages_distributions()\n"
        "tops = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
        "print(json.dumps(sorted({d for t in tops for d in dists.get(t, [])})))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    # setuptools: the venv's own _distutils_hack; sniffio: imported by anyio only when present
    optional = {"pomstream", "setuptools", "sniffio"}
    loaded = {d.lower().replace("_", "-") for d in json.loads(res.stdout)} - optional
    wanted = {re.split(r"[<>=!~;\[ ]", r)[0].lower() for r in _requirements()}
    # what the requirements pull in themselves (pydantic-core, starlette, anyio, ...) is
    # fine; a package no requirement brings would be missing from the image
    from importlib.metadata import PackageNotFoundError, requires

    closure, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:  # a conditional requirement not installed here
            continue
        for req in reqs:
            if "extra ==" not in req:
                todo.append(re.split(r"[<>=!~;\[ (]", req)[0].lower().replace("_", "-"))
    assert loaded <= closure, sorted(loaded - closure)
