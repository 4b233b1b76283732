"""De-identification through the API: what is stored and served for a DICOM upload, the
pseudonymous patient key, kept originals (admins only, audited) and the options."""

from __future__ import annotations

import io
import logging

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import select

from clearscan.app import create_app
from clearscan.audit.models import AuditEvent
from clearscan.cases.models import Case, Image, OriginalImage
from clearscan.config import ConfigError, Settings
from tests.conftest import chest_like, dicom_bytes, login

NAME, PID = "Secretname^Zed", "PID-99887766"


def _predict(client: TestClient, headers: dict[str, str], *uploads: bytes):
    parts = [("file", (f"{i}.dcm", d, "application/dicom")) for i, d in enumerate(uploads)]
    return client.post("/api/v1/predict", headers=headers, files=parts)


def _with(data: bytes, **attrs: object) -> bytes:
    ds = dcmread(io.BytesIO(data))
    for key, value in attrs.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _audit_text(app) -> str:
    with app.state.clearscan.sessions() as db:
        rows = db.scalars(select(AuditEvent)).all()
        return "\n".join(f"{r.action} {r.object_id} {r.details}" for r in rows)


def test_stored_bytes_hold_no_identifiers_and_cases_share_the_patient_key(
    client, clinician_headers, app, caplog
):
    caplog.set_level(logging.DEBUG)
    data = dicom_bytes(chest_like(128), patient_name=NAME, patient_id=PID)
    r1 = _predict(client, clinician_headers, data)
    assert r1.status_code == 200, r1.text
    r2 = _predict(client, clinician_headers, dicom_bytes(chest_like(128, 3), patient_id=PID))
    other = _predict(client, clinician_headers, dicom_bytes(patient_id="PID-000111"))
    assert r2.status_code == other.status_code == 200
    case1 = client.get(f"/api/v1/cases/{r1.json()['case_id']}", headers=clinician_headers).json()
    case2 = client.get(f"/api/v1/cases/{r2.json()['case_id']}", headers=clinician_headers).json()
    key = case1["patient_key"]
    assert key and len(key) == 64 and key == case2["patient_key"]
    assert (
        key
        != client.get(f"/api/v1/cases/{other.json()['case_id']}", headers=clinician_headers).json()[
            "patient_key"
        ]
    )
    # the download is the de-identified file: no name, no ID, new UIDs, same pixels
    image = case1["images"][0]
    f = client.get(image["file_url"], headers=clinician_headers)
    assert f.status_code == 200
    for secret in (NAME, PID, "Secretname", "19700101"):
        assert secret.encode() not in f.content
    stored, sent = dcmread(io.BytesIO(f.content)), dcmread(io.BytesIO(data))
    assert stored.PatientName == "" and stored.PatientID == key
    assert stored.PixelData == sent.PixelData
    assert stored.StudyInstanceUID != sent.StudyInstanceUID
    assert image["study_uid"] == stored.StudyInstanceUID  # the row has the new UIDs only
    # one patient's cases, by key
    listed = client.get(f"/api/v1/cases?patient_key={key}", headers=clinician_headers).json()
    assert {c["id"] for c in listed["items"]} == {case1["id"], case2["id"]}
    assert client.get("/api/v1/cases?patient_key=PID", headers=clinician_headers).status_code == 422
    # nothing kept as received by default; no identifier in the database, logs or audit trail
    with app.state.clearscan.sessions() as db:
        assert db.scalars(select(OriginalImage)).all() == []
        assert all(PID not in (c.patient_key or "") for c in db.scalars(select(Case)))
    for secret in (NAME, PID):
        assert secret not in caplog.text and secret not in _audit_text(app)


def test_two_patients_in_one_analysis_are_refused(client, clinician_headers):
    a = dicom_bytes(patient_id="PID-A-1")
    b = dicom_bytes(patient_id="PID-B-2")
    r = _predict(client, clinician_headers, a, b)
    assert r.status_code == 422 and "2 different patients" in r.json()["detail"]
    assert "PID-A-1" not in r.text and "PID-B-2" not in r.text


@pytest.fixture
def keeping(tmp_path):
    return Settings(
        data_dir=tmp_path / "keep",
        admin_password="admin-password-123",
        secret_key="test-secret-key-that-is-long-enough-0123456789",
        keep_originals=True,
        refuse_burned_in=True,
    )


def test_originals_kept_for_admins_only_and_audited(keeping, model_cache, make_user):
    app = create_app(keeping, model_cache=model_cache)
    with TestClient(app, raise_server_exceptions=False) as client:
        admin = login(client, "admin", "admin-password-123")
        client.post(
            "/api/v1/users",
            headers=admin,
            json={"username": "doc", "password": "doc-password-123", "role": "clinician"},
        )
        doc = login(client, "doc", "doc-password-123")
        data = dicom_bytes(patient_name=NAME, patient_id=PID)
        r = _predict(client, doc, data)
        assert r.status_code == 200, r.text
        image_id = r.json()["predictions"][0]["image_id"]
        assert (
            NAME.encode() not in client.get(f"/api/v1/images/{image_id}/file", headers=doc).content
        )
        url = f"/api/v1/images/{image_id}/original"
        assert client.get(url, headers=doc).status_code == 403
        got = client.get(url, headers=admin)
        assert got.status_code == 200 and got.content == data
        assert "no-store" in got.headers["cache-control"]
        assert f'filename="{image_id}.original.dcm"' in got.headers["content-disposition"]
        assert "image.original_view" in _audit_text(app)
        # a PNG has no original to keep
        png = client.post(
            "/api/v1/predict",
            headers=doc,
            files=[("file", ("x.png", _png(), "image/png"))],
        ).json()["predictions"][0]["image_id"]
        assert client.get(f"/api/v1/images/{png}/original", headers=admin).status_code == 404
        # burned-in annotation: refused here (flagged and analysed by default)
        burned = _with(dicom_bytes(patient_id=PID), BurnedInAnnotation="YES")
        refused = _predict(client, doc, burned)
        assert refused.status_code == 422 and "BurnedInAnnotation" in refused.json()["detail"]
        for secret in (NAME, PID):
            assert secret not in _audit_text(app)


def _png() -> bytes:
    from tests.conftest import png_bytes

    return png_bytes(chest_like(64))


def test_burned_in_images_are_flagged(client, clinician_headers, app):
    burned = _with(dicom_bytes(), BurnedInAnnotation="YES")
    r = _predict(client, clinician_headers, burned, dicom_bytes())
    assert r.status_code == 200, r.text
    case = client.get(f"/api/v1/cases/{r.json()['case_id']}", headers=clinician_headers).json()
    assert [im["burned_in_annotation"] for im in case["images"]] == [True, False]
    with app.state.clearscan.sessions() as db:
        assert sorted(db.scalars(select(Image.burned_in_annotation))) == [False, True]


def test_dates_kept_by_option_and_deidentification_off(tmp_path, model_cache):
    data = _with(dicom_bytes(patient_id=PID), StudyDate="20240229")
    for n, (options, date) in enumerate(
        ((Settings(deid_dates="keep"), "20240229"), (Settings(deidentify=False), None))
    ):
        settings = options.model_copy(
            update={
                "data_dir": tmp_path / str(n),
                "admin_password": "admin-password-123",
                "secret_key": "test-secret-key-that-is-long-enough-0123456789",
            }
        )
        with TestClient(create_app(settings, model_cache=model_cache)) as client:
            admin = login(client, "admin", "admin-password-123")
            r = _predict(client, admin, data)
            assert r.status_code == 200, r.text
            image_id = r.json()["predictions"][0]["image_id"]
            got = client.get(f"/api/v1/images/{image_id}/file", headers=admin).content
            if date is None:
                assert got == data  # a site that must store exactly what it received
            else:
                ds = dcmread(io.BytesIO(got))
                assert ds.StudyDate == date and ds.PatientID != PID


def test_pseudonym_key_required_in_production(tmp_path):
    prod = {
        "environment": "production",
        "data_dir": tmp_path,
        "secret_key": "x" * 40,
    }
    with pytest.raises(ConfigError, match="CLEARSCAN_PSEUDONYM_KEY"):
        _ = Settings(**prod).resolved_pseudonym_key
    with pytest.raises(ConfigError, match="CLEARSCAN_PSEUDONYM_KEY"):
        _ = Settings(**prod, pseudonym_key="changeme").resolved_pseudonym_key
    assert Settings(**prod, pseudonym_key="p" * 32).resolved_pseudonym_key == b"p" * 32
    embedded = Settings(data_dir=tmp_path / "e")
    key = embedded.resolved_pseudonym_key
    assert len(key) >= 32 and Settings(data_dir=tmp_path / "e").resolved_pseudonym_key == key
    assert oct((tmp_path / "e" / "pseudonym_key").stat().st_mode & 0o777) == "0o600"


def _zip(files: dict[str, bytes]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


REFUSED_DATASETS = {
    "numeric cell": ("t.csv", b"x,label\n1,a\n2,b\nDoe^Jane,a\n4,b\n", "Doe^Jane"),
    "split cell": ("t.csv", b"x,label,split\n1,a,train\n2,b,MRN-1234\n", "MRN-1234"),
    "one class": ("t.csv", b"x,label\n1,Smith^John\n2,Smith^John\n", "Smith^John"),
    "file name": (
        "d.zip",
        _zip({"a/Doe_Jane_MRN123.png": b"not an image", "b/x.png": b"no"}),
        "Doe_Jane",
    ),
    "escaping name": ("d.zip", _zip({"../Doe_Jane_MRN123.png": b"x"}), "Doe_Jane"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED_DATASETS))
def test_refused_dataset_rows_and_names_never_reach_audit_logs_or_errors(
    client, admin_headers, app, caplog, kind
):
    caplog.set_level(logging.DEBUG)
    filename, data, secret = REFUSED_DATASETS[kind]
    r = client.post(
        "/api/v1/datasets",
        headers=admin_headers,
        data={"name": "bad", "target": "label"} if filename.endswith(".csv") else {"name": "bad"},
        files={"file": (filename, data, "application/octet-stream")},
    )
    assert r.status_code == 422, r.text
    assert secret not in r.text and secret not in caplog.text
    audit = _audit_text(app)
    assert "dataset.import" in audit and secret not in audit


def test_dicom_dataset_items_are_stored_de_identified(client, admin_headers, app):
    from clearscan.datasets.models import DatasetItem

    files = {
        f"{label}/scan{i}.dcm": dicom_bytes(
            chest_like(32, i + 7 * (label == "b")), patient_name=NAME, patient_id=f"{PID}-{i}"
        )
        for label in ("a", "b")
        for i in range(4)
    }
    r = client.post(
        "/api/v1/datasets",
        headers=admin_headers,
        data={"name": "dicoms"},
        files={"file": ("d.zip", _zip(files), "application/zip")},
    )
    assert r.status_code == 201, r.text
    state = app.state.clearscan
    with state.sessions() as db:
        blobs = db.scalars(select(DatasetItem.blob)).all()
    assert len(blobs) == 8
    for digest in blobs:
        data = state.blobs.get(digest)
        assert data[128:132] == b"DICM"
        assert NAME.encode() not in data and PID.encode() not in data
    item = client.get(f"/api/v1/datasets/{r.json()['id']}/items/0/image.png", headers=admin_headers)
    assert item.status_code == 200 and item.content[:4] == b"\x89PNG"
