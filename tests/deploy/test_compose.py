"""deploy/compose.yaml: Debian's docker-compose (v1) validates it, and its structure holds: two
API replicas behind the proxy, a worker, the backing services, named volumes, secrets from files
only (never a value in the file), Prometheus and Grafana wired to deploy/prometheus and
deploy/grafana. Also the secrets script, the Prometheus config (promtool) and the Makefile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import promtool

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|DATABASE_URL|BROKER_URL|REDIS_URL")


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CLEARSCAN_E2E_REQUIRED") == "1":
            pytest.fail(
                "docker-compose is required (CLEARSCAN_E2E_REQUIRED=1): apt install docker-compose"
            )
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    return found


def mounts(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of a service's volumes, short or long syntax."""
    out = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, dict):
            out.append((vol["source"], vol["target"], bool(vol.get("read_only"))))
        else:
            source, target, *mode = vol.split(":")
            out.append((source, target, "ro" in mode))
    return out


def binds(svc: dict[str, Any]) -> dict[str, Path]:
    return {t: Path(s) for s, t, _ in mounts(svc) if s.startswith(("/", "."))}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as docker-compose resolves it (anchors merged, variables at their defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARSCAN_", "COMPOSE_"))}
    r = subprocess.run(
        [docker_compose(), "--file", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=DEPLOY,
    )
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr, r.stderr
    data: dict[str, Any] = yaml.safe_load(r.stdout)
    return data


def test_docker_compose_config_validates(compose):
    services = compose["services"]
    assert set(services) >= {
        "api",
        "worker",
        "proxy",
        "postgres",
        "redis",
        "minio",
        "minio-init",
        "prometheus",
        "grafana",
    }


def test_api_replicas_and_worker(compose):
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    assert api["deploy"]["replicas"] == 2
    assert api["command"] == ["serve"] and "ports" not in api, "only the proxy publishes a port"
    assert worker["command"][0] == "worker"
    assert api["stop_grace_period"] == "30s" and worker["stop_grace_period"] == "2m"
    for svc in (api, worker):
        assert svc["image"] == "clearscan:latest"
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert Path(svc["build"]["context"]).resolve() == REPO
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
        env = svc["environment"]
        assert env["CLEARSCAN_ENVIRONMENT"] == "production"
        assert env["CLEARSCAN_BROKER_URL"] == "redis://redis:6379/0"
        assert env["CLEARSCAN_BLOB_URL"].startswith("s3://")
        assert env["CLEARSCAN_S3_ENDPOINT_URL"] == "http://minio:9000"
        for name in ("DATABASE_URL", "SECRET_KEY", "ADMIN_PASSWORD", "S3_SECRET_ACCESS_KEY"):
            assert env[f"CLEARSCAN_{name}_FILE"].startswith("/run/secrets/")
        for dep in ("postgres", "redis", "minio-init"):
            assert dep in svc["depends_on"]
    proxy = compose["services"]["proxy"]
    assert proxy["ports"] and "api" in proxy["depends_on"]
    conf = (DEPLOY / "compose" / "nginx.conf").read_text()
    assert "http://api:8000" in conf and "resolver 127.0.0.11" in conf


def test_volumes_are_named(compose):
    assert set(compose["volumes"]) >= {
        "clearscan-data",
        "postgres-data",
        "redis-data",
        "minio-data",
        "prometheus-data",
        "grafana-data",
    }
    for name, svc in compose["services"].items():
        for source, _target, read_only in mounts(svc):
            if source.startswith(("/", ".")):
                assert read_only, f"{name}: a host path mounted writable: {source}"
                assert Path(source).resolve().is_relative_to(DEPLOY), f"{name}: {source}"
                assert Path(source).exists(), f"{name} mounts a missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: an unnamed volume {source}"


def test_no_secret_value_is_written_in_the_file(compose):
    raw = yaml.safe_load(COMPOSE.read_text())
    services = {**raw["services"], "x-clearscan": raw["x-clearscan"]}
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRETISH.search(key) and not key.endswith("_FILE"):
                # the one URL given inline names no credentials
                assert key == "CLEARSCAN_BROKER_URL" and "@" not in str(value), (name, key)
    for name, secret in compose["secrets"].items():
        path = Path(secret["file"]).resolve()
        assert path.parent == DEPLOY / "compose" / "secrets", name
    assert "/secrets/" in (DEPLOY / "compose" / ".gitignore").read_text().split()
    used = {
        s if isinstance(s, str) else s["source"]
        for svc in raw["services"].values()
        for s in svc.get("secrets", [])
    }
    used |= set(raw["x-clearscan"]["secrets"])
    assert used == set(compose["secrets"]), "every secret is used, every used secret defined"


def test_init_secrets_creates_every_secret_once(tmp_path):
    script = tmp_path / "compose" / "init-secrets.sh"
    script.parent.mkdir()
    shutil.copy2(DEPLOY / "compose" / "init-secrets.sh", script)
    first = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stderr
    secrets = tmp_path / "compose" / "secrets"
    names = {p.name for p in secrets.iterdir()}
    assert names == set(yaml.safe_load(COMPOSE.read_text())["secrets"])
    values = {n: (secrets / n).read_text() for n in names}
    assert all(v and "\n" not in v for v in values.values())
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    assert all((secrets / n).stat().st_mode & 0o777 == 0o644 for n in names)
    pw = values["postgres_password"]
    assert values["database_url"] == f"postgresql://clearscan:{pw}@postgres:5432/clearscan"
    assert len(values["secret_key"]) >= 32 and len(values["metrics_token"]) >= 16
    again = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and again.stdout == ""
    assert {n: (secrets / n).read_text() for n in names} == values, "existing secrets are kept"


def test_prometheus_scrapes_every_replica_and_loads_the_rules(compose, tmp_path):
    prom = compose["services"]["prometheus"]
    bound = binds(prom)
    assert bound["/etc/prometheus/clearscan/rules.yml"] == DEPLOY / "prometheus" / "rules.yml"
    config_path = bound["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == ["/etc/prometheus/clearscan/rules.yml"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "clearscan")
    assert job["dns_sd_configs"][0]["names"] == ["api"] and job["dns_sd_configs"][0]["port"] == 8000
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert "metrics_token" in [s if isinstance(s, str) else s["source"] for s in prom["secrets"]]
    # promtool checks the config and the rules it loads, with the container paths mapped here
    token = tmp_path / "metrics_token"
    token.write_text("0123456789abcdef0123")
    local = tmp_path / "prometheus.yml"
    local.write_text(
        config_path.read_text()
        .replace("/etc/prometheus/clearscan/rules.yml", str(DEPLOY / "prometheus" / "rules.yml"))
        .replace("/run/secrets/metrics_token", str(token))
    )
    r = subprocess.run(
        [promtool(), "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_is_provisioned_from_deploy_grafana(compose):
    graf = compose["services"]["grafana"]
    bound = binds(graf)
    assert bound["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "clearscan.yml").read_text()
    )
    folder = provider["providers"][0]["options"]["path"]
    assert bound[f"{folder}/clearscan.json"] == DEPLOY / "grafana" / "clearscan.json"
    assert graf["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
    assert graf["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"


def test_make_targets():
    r = subprocess.run(
        ["make", "-n", "up", "down", "IMAGE=clearscan:latest", "COMPOSE=docker-compose"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "docker build -f deploy/docker/Dockerfile -t clearscan:latest" in r.stdout
    assert "sh deploy/compose/init-secrets.sh" in r.stdout
    assert "docker-compose -p clearscan -f deploy/compose.yaml up -d" in r.stdout
    assert "docker-compose -p clearscan -f deploy/compose.yaml down" in r.stdout
    helps = subprocess.run(["make", "help"], capture_output=True, text=True, cwd=REPO).stdout
    assert all(f"make {t}" in helps for t in ("image", "up", "down"))
