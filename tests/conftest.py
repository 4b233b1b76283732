"""Shared fixtures: settings on a temp data dir, the app, clients and users per role, and image
factories. Every test gets its own data dir and database; loaded model versions are cached."""

from __future__ import annotations

import io
import itertools
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from clearscan.app import create_app
from clearscan.config import Settings
from clearscan.registry.cache import ModelCache

ADMIN_PASSWORD = "admin-password-123"
PASSWORD = "correct-horse-battery"
_counter = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def audit_default_key() -> Iterator[None]:
    """Databases no app or CLI registered a key for (the service tests' engines) sign the audit
    chain with this one; apps register their own (the key file in their data dir)."""
    from clearscan.audit import keys

    keys.set_default(keys.Keyring.of("test-audit-key-for-unregistered-databases-0123"))
    yield
    keys.set_default(None)


@pytest.fixture(scope="session", autouse=True)
def quick_password_hashing() -> Iterator[None]:
    """Argon2id with its smallest parameters for the run: every test signs users in, and the
    production parameters cost about 80 ms per hash or check. Hashing and verification stay
    real (the same library and algorithm); tests/auth checks the production parameters."""
    from argon2 import PasswordHasher

    from clearscan.auth import security

    saved = security._hasher, security._DUMMY_HASH
    security._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    security._DUMMY_HASH = security._hasher.hash("no-such-user")
    yield
    security._hasher, security._DUMMY_HASH = saved


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database at this code's schema head, migrated once for the run: each test's
    data dir starts from a copy (start-up finds it current; tests/db migrate from scratch)."""
    from clearscan.db.migrate import upgrade

    path = tmp_path_factory.mktemp("template") / "clearscan.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def settings(tmp_path: Path, migrated_sqlite: Path) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(migrated_sqlite, data_dir / "clearscan.db")
    return Settings(
        data_dir=data_dir,
        admin_password=ADMIN_PASSWORD,
        secret_key="test-secret-key-that-is-long-enough-0123456789",
    )


@pytest.fixture(scope="session")
def model_cache() -> ModelCache:
    """One cache of loaded model versions for the apps of the whole run (keyed by folder and
    weights hash, so apps never see each other's models): a fresh app per test stays cheap."""
    return ModelCache()


@pytest.fixture
def app(settings: Settings, model_cache: ModelCache) -> FastAPI:
    return create_app(settings, model_cache=model_cache)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def login(client: TestClient, username: str, password: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def admin_headers(client: TestClient) -> dict[str, str]:
    return login(client, "admin", ADMIN_PASSWORD)


@pytest.fixture
def make_user(client: TestClient, admin_headers: dict[str, str]) -> Callable[[str], dict[str, str]]:
    """Create a user with `role` and return bearer headers for them."""

    def make(role: str) -> dict[str, str]:
        name = f"{role}{next(_counter)}"
        r = client.post(
            "/api/v1/users",
            headers=admin_headers,
            json={"username": name, "password": PASSWORD, "role": role},
        )
        assert r.status_code == 201, r.text
        return login(client, name, PASSWORD)

    return make


@pytest.fixture
def clinician_headers(make_user: Callable[[str], dict[str, str]]) -> dict[str, str]:
    return make_user("clinician")


@pytest.fixture
def viewer_headers(make_user: Callable[[str], dict[str, str]]) -> dict[str, str]:
    return make_user("viewer")


def chest_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A synthetic grayscale image in [0, 1] with two dark 'lungs' on a brighter body."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.35 * (
        np.exp(-((xx - 0.32) ** 2 + (yy - 0.5) ** 2) / 0.03)
        + np.exp(-((xx - 0.68) ** 2 + (yy - 0.5) ** 2) / 0.03)
    )
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def png_bytes(arr: np.ndarray | None = None, *, bits: int = 8) -> bytes:
    arr = chest_like() if arr is None else arr
    buf = io.BytesIO()
    if bits == 16:
        Image.fromarray((arr * 65535).astype(np.uint16)).save(buf, format="PNG")
    else:
        Image.fromarray((arr * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(
    arr: np.ndarray | None = None,
    *,
    modality: str = "DX",
    bits: int = 16,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-4711",
    **attrs: Any,
) -> bytes:
    """An uncompressed DICOM (MONOCHROME2) with patient identifiers that must never be logged;
    `attrs` sets more attributes by keyword (PixelSpacing=[0.2, 0.3], ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = chest_like(512) if arr is None else arr
    maxval = (1 << bits) - 1 if bits <= 16 else 65535
    pixels = (arr * maxval).astype(np.uint16 if bits > 8 else np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def pg_available() -> bool:
    """Whether the machine's PostgreSQL (127.0.0.1:5432, trust auth) answers."""
    try:
        import psycopg

        psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3
        ).close()
        return True
    except Exception:
        return False


@contextmanager
def pg_database(settings: Settings) -> Iterator[Settings]:
    """`settings` pointed at a fresh PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"clearscan_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield settings.model_copy(
            update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"}
        )
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- service tests: one migrated database, a rolled-back transaction per test -----------------


@pytest.fixture(scope="session")
def migrated_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A SQLite database migrated to head once for the whole run (service tests share it; each
    test's writes are rolled back by `db`)."""
    from clearscan.db import create_db_engine
    from clearscan.db.migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('service-db') / 'clearscan.db'}"
    upgrade(url)
    engine = create_db_engine(url)

    # pysqlite opens transactions lazily and would end one at a RELEASE SAVEPOINT; let SQLAlchemy
    # emit BEGIN itself so that savepoints nest inside the test's transaction.
    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    yield engine
    engine.dispose()


@contextmanager
def rolled_back_session(engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back at the end: what the code under test
    commits is a savepoint (``join_transaction_mode="create_savepoint"``), so nothing outlives
    the test and every test starts from the freshly migrated database."""
    conn = engine.connect()
    outer = conn.begin()
    session = Session(
        bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False, autoflush=False
    )
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        conn.close()


@pytest.fixture
def db(migrated_engine: Engine) -> Iterator[Session]:
    """A session in a transaction rolled back after the test (see `rolled_back_session`)."""
    with rolled_back_session(migrated_engine) as session:
        yield session
