"""Restore drills: fill a server with cases (uploaded through the API), predictions with heatmaps,
reviews, a model version, datasets (images and a table) and audit events; back it up while it
runs; wipe it; restore; compare."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clearscan.audit import keys as audit_keys
from clearscan.backup import database, service
from clearscan.backup.target import LocalLocation, Location
from clearscan.bootstrap import blob_store, model_store
from clearscan.config import Settings
from clearscan.registry.catalog import BUNDLED_DIR
from tests.conftest import PASSWORD, chest_like, dicom_bytes, login, png_bytes
from tests.storage.conftest import S3Server, s3_bucket, s3_env, s3_server  # noqa: F401

BUNDLED = BUNDLED_DIR / "pneumonia-cxr"


def package_zip(version: str) -> bytes:
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    manifest["version"] = version
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for f in manifest["files"]:
            zf.write(BUNDLED / f, f)
    return buf.getvalue()


def dataset_zip(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in ("normal", "pneumonia"):
            for i in range(8):
                zf.writestr(f"ds/{c}/{i:03d}.png", png_bytes(rng.random((16, 16))))
    return buf.getvalue()


def table_csv(rows: int = 60) -> bytes:
    rng = np.random.default_rng(1)
    lines = ["age,score,label"]
    for i in range(rows):
        lines.append(f"{20 + i % 50},{rng.random():.4f},{'yes' if i % 2 else 'no'}")
    return ("\n".join(lines) + "\n").encode()


def populate(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    """Cases, predictions, reviews, a model version, two datasets, users and audit events."""
    r = client.post(
        "/api/v1/users",
        headers=admin,
        json={"username": "dr-drill", "password": PASSWORD, "role": "clinician"},
    )
    assert r.status_code == 201, r.text
    clinician = login(client, "dr-drill", PASSWORD)
    predictions = []
    for i, (name, data) in enumerate(
        [
            ("a.png", png_bytes(chest_like(128, seed=1))),
            ("b.png", png_bytes(chest_like(128, seed=2))),
            ("c.dcm", dicom_bytes(chest_like(64, seed=3))),
        ]
    ):
        r = client.post(
            "/api/v1/predict",
            headers=clinician,
            files=[("file", (name, data, "application/octet-stream"))],
            data={"note": f"drill case {i}"},
        )
        assert r.status_code == 200, r.text
        predictions += r.json()["predictions"]
    for p in predictions[:2]:
        r = client.post(
            f"/api/v1/predictions/{p['id']}/review",
            headers=clinician,
            json={"agree": True, "comment": "drill"},
        )
        assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/models",
        headers=admin,
        files={"file": ("pkg.zip", package_zip("1.5.0"), "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/datasets",
        headers=admin,
        data={"name": "drill-images"},
        files={"file": ("data.zip", dataset_zip(), "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/datasets",
        headers=admin,
        data={"name": "drill-table", "target": "label"},
        files={"file": ("t.csv", table_csv(), "text/csv")},
    )
    assert r.status_code == 201, r.text
    return {"predictions": predictions}


def blob_digests(settings: Settings) -> dict[str, str]:
    """Every blob the store holds: address -> sha256 of its bytes."""
    from clearscan.backup.files import stored_digests

    store = blob_store(settings)
    found = stored_digests(store) or set()
    return {d: hashlib.sha256(store.get(d)).hexdigest() for d in sorted(found)}


def sources(settings: Settings) -> service.Sources:
    return service.Sources(
        database_url=settings.sqlalchemy_url,
        blobs=blob_store(settings),
        models_root=model_store(settings).root,
        data_dir=settings.data_dir,
    )


def target(settings: Settings) -> service.Target:
    return service.Target(
        data_dir=settings.data_dir,
        database_url=settings.sqlalchemy_url,
        open_blobs=lambda: blob_store(settings),
        models_root=model_store(settings).root,
        audit_keys=lambda: audit_keys.install(settings),
    )


@dataclass
class Before:
    counts: dict[str, int]
    blobs: dict[str, str]
    audit_key: str


def snapshot_state(settings: Settings) -> Before:
    return Before(
        counts=database.row_counts(settings.sqlalchemy_url),
        blobs=blob_digests(settings),
        audit_key=settings.resolved_audit_key,
    )


def check_restored(restored: Settings, before: Before, app_factory: Callable[..., FastAPI]) -> None:
    """Same rows in every table, every blob the database references back with its sha256, the
    audit chain verifies, and the restored server serves the cases."""
    after = database.row_counts(restored.sqlalchemy_url)
    assert after == before.counts
    restored_blobs = blob_digests(restored)
    assert all(d == h for d, h in restored_blobs.items())  # every blob hashes to its address
    refs = database.references(restored.sqlalchemy_url)
    held = set(before.blobs)
    referenced = refs.candidates & held
    assert referenced and referenced <= set(restored_blobs)
    assert refs.strict <= set(restored_blobs)
    app = app_factory(restored)
    with TestClient(app, raise_server_exceptions=False) as c:
        from tests.conftest import ADMIN_PASSWORD

        h = login(c, "admin", ADMIN_PASSWORD)
        verdict = c.get("/api/v1/audit/verify", headers=h)
        assert verdict.status_code == 200 and verdict.json()["ok"], verdict.text
        cases = c.get("/api/v1/cases?limit=50", headers=h).json()
        assert cases["total"] == 3
        case = c.get(f"/api/v1/cases/{cases['items'][0]['id']}", headers=h).json()
        image_id = case["images"][0]["id"]
        assert c.get(f"/api/v1/images/{image_id}/file", headers=h).status_code == 200
        datasets = c.get("/api/v1/datasets", headers=h).json()
        assert datasets["total"] == 2
        versions = c.get("/api/v1/models/pneumonia-cxr/versions", headers=h).json()
        assert "1.5.0" in {v["version"] for v in versions["items"]}


@pytest.fixture
def backups(tmp_path: Path) -> Location:
    return LocalLocation(tmp_path / "backups")


@dataclass
class Small:
    settings: Settings
    location: LocalLocation
    name: str
    blobs: list[str]


def small_site(settings: Settings, n_blobs: int = 3) -> list[str]:
    """An initialised data dir with a case whose images are `n_blobs` blobs, written through
    the services (no model run), and audit events."""
    from clearscan.audit import service as audit
    from clearscan.audit.actions import Action
    from clearscan.bootstrap import initialise
    from clearscan.cases.models import Case, Image
    from clearscan.db import create_db_engine, make_session_factory

    initialise(settings)
    audit_keys.install(settings)
    store = blob_store(settings)
    digests = [store.put(f"image bytes {i}".encode() * 100) for i in range(n_blobs)]
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with make_session_factory(engine)() as db:
            case = Case(created_by_id=1, note="small")
            db.add(case)
            db.flush()
            for i, d in enumerate(digests):
                db.add(
                    Image(
                        case_id=case.id,
                        position=i,
                        sha256=d,
                        size_bytes=1300,
                        format="png",
                        width=8,
                        height=8,
                    )
                )
            audit.append(
                audit.Entry(Action.CASE_CREATE, object_type="case", object_id=case.id),
                db=db,
                ctx=audit.RequestContext(actor="test"),
            )
            db.commit()
    finally:
        engine.dispose()
    return digests


@pytest.fixture
def small(settings: Settings, tmp_path: Path) -> Small:
    digests = small_site(settings)
    location = LocalLocation(tmp_path / "backups")
    made = service.create(sources(settings), location)
    return Small(settings, location, made.name, digests)
