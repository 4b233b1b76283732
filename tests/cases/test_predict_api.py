"""POST /api/v1/predict and the case endpoints, through the ASGI app."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import chest_like, dicom_bytes, png_bytes

DATASET = (
    Path(__file__).resolve().parents[3]
    / "shared/datasets/pneumoniamnist/pneumoniamnist_trainval.npz"
)


def _predict(
    client: TestClient, headers: dict[str, str], files: list[tuple[str, bytes]], **form: str
):
    parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/api/v1/predict", headers=headers, files=parts, data=form)


def test_predict_png_returns_probabilities_and_heatmap(client, clinician_headers):
    r = _predict(client, clinician_headers, [("x.png", png_bytes())])
    assert r.status_code == 200, r.text
    body = r.json()
    (p,) = body["predictions"]
    assert p["model"] == {"name": "pneumonia-cxr", "version": "1.0.0"}
    assert p["labels"] == ["normal", "pneumonia"]
    assert abs(sum(p["probabilities"]) - 1) < 1e-4
    assert p["top_label"] in p["labels"]
    assert p["inference_ms"] > 0
    heat = client.get(p["heatmap_url"], headers=clinician_headers)
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    hm = Image.open(io.BytesIO(heat.content))
    assert hm.mode == "RGBA" and max(hm.size) <= 28  # native resolution, not full size


def test_predict_many_files_one_case_in_upload_order(client, clinician_headers):
    files = [
        ("a.png", png_bytes(chest_like(200, 1))),
        ("b.dcm", dicom_bytes()),
        ("c.png", png_bytes(chest_like(300, 2), bits=16)),
    ]
    r = _predict(client, clinician_headers, files, patient_ref="MRN-1", note="follow-up")
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 3
    case = client.get(f"/api/v1/cases/{body['case_id']}", headers=clinician_headers).json()
    assert [im["format"] for im in case["images"]] == ["png", "dicom", "png"]
    assert [im["predictions"][0]["id"] for im in case["images"]] == [
        p["id"] for p in body["predictions"]
    ]
    assert case["images"][1]["bit_depth"] == 16 and case["images"][1]["sop_uid"]
    assert case["patient_ref"] == "MRN-1" and case["note"] == "follow-up"


def test_predict_without_explanation_has_no_heatmap(client, clinician_headers):
    r = _predict(client, clinician_headers, [("x.png", png_bytes())], explain="false")
    assert r.status_code == 200
    assert r.json()["predictions"][0]["heatmap_url"] is None


def test_same_pixels_same_prediction_png_and_dicom(client, clinician_headers):
    arr = chest_like(256, 3)
    arr[0, 0], arr[-1, -1] = 0.0, 1.0  # full range: DICOM without a window is shown min-max
    a = _predict(client, clinician_headers, [("a.png", png_bytes(arr, bits=16))]).json()
    b = _predict(client, clinician_headers, [("b.dcm", dicom_bytes(arr))]).json()
    pa, pb = a["predictions"][0]["probabilities"], b["predictions"][0]["probabilities"]
    assert np.allclose(pa, pb, atol=1e-3)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 422, "empty"),
        (b"GIF89a" + b"\0" * 100, 415, ""),
        (b"hello world, not an image at all", 415, ""),
        (png_bytes()[:200], 422, ""),
    ],
)
def test_bad_uploads_are_rejected_and_store_nothing(
    client, clinician_headers, admin_headers, data, status, words
):
    before = client.get("/api/v1/cases", headers=admin_headers).json()["total"]
    r = _predict(client, clinician_headers, [("f.png", data)])
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.get("/api/v1/cases", headers=admin_headers).json()["total"] == before
    audit = client.get("/api/v1/audit?action=predict", headers=admin_headers).json()
    assert audit["items"][0]["outcome"] == "rejected"


def test_one_bad_file_rejects_the_whole_request(client, clinician_headers, admin_headers):
    r = _predict(client, clinician_headers, [("ok.png", png_bytes()), ("bad.png", b"junk")])
    assert r.status_code == 415
    assert "file 2" in r.json()["detail"]
    assert client.get("/api/v1/cases", headers=admin_headers).json()["total"] == 0


def test_unknown_model_404(client, clinician_headers):
    r = _predict(client, clinician_headers, [("x.png", png_bytes())], model="nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_incompatible_modality_422(client, clinician_headers):
    r = _predict(client, clinician_headers, [("ct.dcm", dicom_bytes(modality="CT"))])
    assert r.status_code == 422 and "CT" in r.json()["detail"]


def test_tiny_image_incompatible_422(client, clinician_headers):
    r = _predict(client, clinician_headers, [("t.png", png_bytes(chest_like(8)))])
    assert r.status_code == 422


def test_upload_over_limit_413_before_body_is_read(settings):
    from clearscan.app import create_app

    small = settings.model_copy(update={"max_upload_mb": 0.01})
    with TestClient(create_app(small)) as c:
        from tests.conftest import ADMIN_PASSWORD, login

        h = login(c, "admin", ADMIN_PASSWORD)
        r = _predict(c, h, [("big.png", png_bytes(chest_like(512)))])
        assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_no_credentials_401_and_viewer_403(client, viewer_headers, admin_headers):
    assert _predict(client, {}, [("x.png", png_bytes())]).status_code == 401
    r = _predict(client, viewer_headers, [("x.png", png_bytes())])
    assert r.status_code == 403 and "role" in r.json()["detail"]
    actions = client.get("/api/v1/audit?action=access.denied", headers=admin_headers).json()
    assert actions["total"] >= 2


def test_review_flow(client, clinician_headers):
    p = _predict(client, clinician_headers, [("x.png", png_bytes())]).json()["predictions"][0]
    other = next(lab for lab in p["labels"] if lab != p["top_label"])
    bad = client.post(
        f"/api/v1/predictions/{p['id']}/review", headers=clinician_headers, json={"agree": False}
    )
    assert bad.status_code == 422
    bad = client.post(
        f"/api/v1/predictions/{p['id']}/review",
        headers=clinician_headers,
        json={"agree": False, "correct_label": "martian"},
    )
    assert bad.status_code == 422 and "martian" in bad.json()["detail"]
    ok = client.post(
        f"/api/v1/predictions/{p['id']}/review",
        headers=clinician_headers,
        json={"agree": False, "correct_label": other, "comment": "consolidation"},
    )
    assert ok.status_code == 201, ok.text
    assert (
        client.post(
            "/api/v1/predictions/nope/review", headers=clinician_headers, json={"agree": True}
        ).status_code
        == 404
    )


def test_case_list_filters_and_pagination(client, clinician_headers, make_user):
    other = make_user("clinician")
    for _ in range(3):
        _predict(client, clinician_headers, [("x.png", png_bytes())])
    _predict(client, other, [("x.png", png_bytes())])
    all_ = client.get("/api/v1/cases?limit=2", headers=clinician_headers).json()
    assert all_["total"] == 4 and len(all_["items"]) == 2
    page2 = client.get("/api/v1/cases?limit=2&offset=2", headers=clinician_headers).json()
    assert {c["id"] for c in page2["items"]}.isdisjoint({c["id"] for c in all_["items"]})
    label = all_["items"][0]["top_labels"][0]
    by_label = client.get(f"/api/v1/cases?label={label}", headers=clinician_headers).json()
    assert all(label in c["top_labels"] for c in by_label["items"])
    user = all_["items"][0]["created_by"]
    by_user = client.get(f"/api/v1/cases?user={user}", headers=clinician_headers).json()
    assert by_user["total"] >= 1 and all(c["created_by"] == user for c in by_user["items"])
    future = client.get(
        "/api/v1/cases?since=2999-01-01T00:00:00Z", headers=clinician_headers
    ).json()
    assert future["total"] == 0


def test_image_file_and_preview_behind_auth(client, clinician_headers):
    data = dicom_bytes()
    body = _predict(client, clinician_headers, [("x.dcm", data)]).json()
    image_id = body["predictions"][0]["image_id"]
    assert client.get(f"/api/v1/images/{image_id}/file").status_code == 401
    f = client.get(f"/api/v1/images/{image_id}/file", headers=clinician_headers)
    assert f.status_code == 200 and f.content[128:132] == b"DICM"
    assert b"Doe^Jane" not in f.content and b"PID-4711" not in f.content  # de-identified
    pv = client.get(f"/api/v1/images/{image_id}/preview.png", headers=clinician_headers)
    assert pv.status_code == 200 and pv.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_flipped_byte_in_stored_blob_is_an_integrity_error(client, clinician_headers, app):
    data = png_bytes()
    body = _predict(client, clinician_headers, [("x.png", data)]).json()
    image_id = body["predictions"][0]["image_id"]
    case = client.get(f"/api/v1/cases/{body['case_id']}", headers=clinician_headers).json()
    sha = case["images"][0]["sha256"]
    store = app.state.clearscan.blobs
    path = store._path(sha)
    path.chmod(0o640)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    r = client.get(f"/api/v1/images/{image_id}/file", headers=clinician_headers)
    assert r.status_code == 500 and "integrity" in r.json()["detail"]


def test_patient_identifiers_never_logged(client, clinician_headers, caplog):
    caplog.set_level(logging.DEBUG)
    data = dicom_bytes(patient_name="Secretname^Zed", patient_id="PID-99887766")
    r = _predict(client, clinician_headers, [("x.dcm", data)], patient_ref="MRN-55443322")
    assert r.status_code == 200
    text = caplog.text
    for secret in ("Secretname", "PID-99887766", "MRN-55443322", "19700101"):
        assert secret not in text


def test_gradcam_plus_plus_method(client, clinician_headers):
    arr = chest_like(256, 5)
    plain = _predict(client, clinician_headers, [("x.png", png_bytes(arr))]).json()["predictions"][
        0
    ]
    pp = _predict(
        client, clinician_headers, [("x.png", png_bytes(arr))], explain_method="gradcam++"
    ).json()["predictions"][0]
    assert plain["explain_method"] == "gradcam" and pp["explain_method"] == "gradcam++"
    assert plain["probabilities"] == pp["probabilities"]
    a = np.asarray(
        Image.open(io.BytesIO(client.get(plain["heatmap_url"], headers=clinician_headers).content))
    )
    b = np.asarray(
        Image.open(io.BytesIO(client.get(pp["heatmap_url"], headers=clinician_headers).content))
    )
    assert a.shape == b.shape and not np.array_equal(a, b)
    bad = _predict(client, clinician_headers, [("x.png", png_bytes(arr))], explain_method="lime")
    assert bad.status_code == 422 and "explain_method" in bad.json()["detail"]


def test_concurrent_requests_go_through_the_versions_batcher(client, clinician_headers, app):
    """Every image of every concurrent request is served by the version's micro-batcher
    (coalescing itself is tested deterministically in tests/inference/test_batching.py)."""
    import threading

    model = app.state.clearscan.registry.get("pneumonia-cxr").model
    assert model is not None
    before = model.batcher("gradcam").stats
    codes: list[int] = []

    def one() -> None:
        for _ in range(4):
            codes.append(_predict(client, clinician_headers, [("x.png", png_bytes())]).status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = model.batcher("gradcam").stats
    assert codes == [200] * 24
    assert after.items - before.items == 24
    assert after.failed_items == before.failed_items


def test_out_of_domain_inputs_are_flagged(client, clinician_headers):
    """Chest X-ray-like inputs pass; a photograph-like colour image and an MR slice are flagged."""
    from pydicom.data import get_testdata_file

    from clearscan.imaging import decode

    yy, xx = np.mgrid[0:256, 0:256] / 256
    photo = np.stack([0.5 + 0.5 * np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in (0, 1, 2)], -1)
    photo[80:160, 60:200] = [0.9, 0.2, 0.1]
    buf = io.BytesIO()
    Image.fromarray((photo * 255).astype(np.uint8), mode="RGB").save(buf, format="PNG")
    mr = decode(Path(get_testdata_file("MR_small.dcm")).read_bytes()).pixels
    ct = decode(Path(get_testdata_file("CT_small.dcm")).read_bytes()).pixels
    val = np.load(DATASET)["val_images"][:3] if DATASET.exists() else []
    files = [
        ("photo.png", buf.getvalue()),
        ("mr.png", png_bytes(mr)),
        ("ct.png", png_bytes(ct)),
        ("blank.png", png_bytes(np.zeros((64, 64), np.float32))),
    ]
    files += [(f"cxr{i}.png", png_bytes(v / 255.0)) for i, v in enumerate(val)]
    r = _predict(client, clinician_headers, files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[0]["out_of_domain"] is True and preds[0]["ood_score"] > 1
    assert [p["out_of_domain"] for p in preds[1:4]] == [True, True, True]
    for p in preds[4:]:
        assert p["out_of_domain"] is False and p["ood_score"] < 1
