"""A segmentation model through POST /api/v1/predict: the reply says `task: segmentation` with
the label map's URL, each class's area in pixels and, for a DICOM with a pixel spacing, in mm2
and where the spacing came from; the label map is served at the image's resolution, aligned with
its pixels, as PHI (no-store, team-scoped, audited)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.api.test_no_store import assert_no_store
from tests.conftest import dicom_bytes
from tests.inference.test_segmentation import dark_vessel_graph, picture, png, write_package


def package_zip(tmp_path: Path) -> bytes:
    pkg = write_package(tmp_path, dark_vessel_graph())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in pkg.iterdir():
            zf.write(f, f.name)
    return buf.getvalue()


@pytest.fixture
def vessels(client, admin_headers, tmp_path) -> str:
    r = client.post(
        "/api/v1/models",
        headers=admin_headers,
        files={"file": ("vessels.zip", package_zip(tmp_path), "application/zip")},
    )
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/models/vessels/versions/1.0.0/activate", headers=admin_headers)
    assert r.status_code == 200, r.text
    return "vessels"


def predict(client, headers, model: str, name: str, data: bytes, kind: str):
    return client.post(
        "/api/v1/predict",
        headers=headers,
        data={"model": model},
        files=[("file", (name, data, kind))],
    )


def test_predict_with_a_segmentation_model(client, clinician_headers, admin_headers, vessels):
    truth = picture(120, 160, [(slice(30, 60), slice(10, 150))])
    r = predict(client, clinician_headers, vessels, "a.png", png(truth), "image/png")
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    assert pred["task"] == "segmentation" and pred["labels"] == ["background", "vessel"]
    assert pred["heatmap_url"] is None and pred["top_label"] == "vessel"
    assert pred["area_mm2"] is None and pred["pixel_spacing"] is None
    vessel = pred["area_px"]["vessel"]
    assert abs(vessel - 30 * 140) < 0.05 * 30 * 140
    assert pred["probabilities"][1] == pytest.approx(vessel / (120 * 160), abs=1e-5)

    m = client.get(pred["mask_url"], headers=clinician_headers)
    assert m.status_code == 200 and m.headers["content-type"] == "image/png"
    assert_no_store(m, "mask.png")
    label_map = np.asarray(PILImage.open(io.BytesIO(m.content)))
    assert label_map.shape == (120, 160) and int(label_map.sum()) == vessel
    assert label_map[45, 80] == 1 and label_map[5, 5] == 0  # aligned with the image's pixels

    events = client.get("/api/v1/audit?action=mask.view", headers=admin_headers).json()
    assert events["total"] == 1 and events["items"][0]["object_id"] == pred["id"]
    # the case reads back the same way
    case = client.get(f"/api/v1/cases/{r.json()['case_id']}", headers=clinician_headers).json()
    stored = case["images"][0]["predictions"][0]
    assert stored["mask_url"] == pred["mask_url"] and stored["area_px"] == pred["area_px"]


def test_areas_in_mm2_with_the_spacing_source(client, clinician_headers, vessels):
    arr = np.where(picture(100, 100, [(slice(20, 40), slice(0, 100))]) < 128, 0.1, 0.9)
    data = dicom_bytes(
        arr,
        modality="XA",
        ImagerPixelSpacing=[0.3, 0.3],
        DistanceSourceToDetector=1200,
        DistanceSourceToPatient=800,
    )
    r = predict(client, clinician_headers, vessels, "a.dcm", data, "application/dicom")
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    spacing = pred["pixel_spacing"]
    assert (
        spacing["row_mm"] == pytest.approx(0.2) and "DistanceSourceToDetector" in spacing["source"]
    )
    assert pred["area_mm2"]["vessel"] == pytest.approx(pred["area_px"]["vessel"] * 0.04, rel=1e-3)


def test_no_vessel_found_is_an_answer(client, clinician_headers, vessels):
    blank = png(np.full((64, 64), 230, np.uint8))
    r = predict(client, clinician_headers, vessels, "blank.png", blank, "image/png")
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    assert pred["area_px"] == {"vessel": 0} and pred["top_label"] == "background"


def test_the_mask_is_scoped_like_the_case(
    client, clinician_headers, viewer_headers, make_user, vessels
):
    r = predict(client, clinician_headers, vessels, "a.png", png(picture(64, 64, [])), "image/png")
    url = r.json()["predictions"][0]["mask_url"]
    assert client.get(url, headers=viewer_headers).status_code == 200  # same team
    classified = predict(
        client, clinician_headers, "pneumonia-cxr", "b.png", png(picture(64, 64, [])), "image/png"
    ).json()["predictions"][0]
    assert classified["task"] == "classification" and classified["mask_url"] is None
    missing = client.get(f"/api/v1/predictions/{classified['id']}/mask.png", headers=viewer_headers)
    assert missing.status_code == 404 and "not a segmentation" in missing.json()["detail"]


def test_the_case_page_shows_a_segmentation(app, client, clinician_headers, vessels):
    from fastapi.testclient import TestClient

    from tests.conftest import ADMIN_PASSWORD
    from tests.web.test_pages import web_login

    truth = picture(64, 64, [(slice(20, 30), slice(0, 64))])
    r = predict(client, clinician_headers, vessels, "a.png", png(truth), "image/png")
    browser = TestClient(app, raise_server_exceptions=False)  # the app is already running
    assert web_login(browser, "admin", ADMIN_PASSWORD).status_code == 303
    page = browser.get(f"/cases/{r.json()['case_id']}")
    browser.close()
    assert page.status_code == 200, page.text[:500]
    assert "vessels" in page.text and "vessel" in page.text


def stenosed_tube(h: int = 120, w: int = 260, r: float = 10.0, percent: float = 60.0) -> np.ndarray:
    """A dark horizontal tube of radius r (bright background) with a cosine-shaped narrowing of
    `percent` diameter stenosis, 60 px long, at its middle."""
    yy, xx = np.mgrid[0:h, 0:w]
    centre = w / 2
    dip = np.where(np.abs(xx - centre) < 30, 0.5 * (1 + np.cos(np.pi * (xx - centre) / 30)), 0.0)
    radius = r * (1 - percent / 100 * dip)
    tube = (np.abs(yy + 0.5 - h / 2) <= radius) & (xx >= 10) & (xx < w - 10)
    return np.where(tube, 20, 220).astype(np.uint8)


@pytest.fixture
def qca_model(client, admin_headers, tmp_path) -> str:
    pkg = write_package(
        tmp_path, dark_vessel_graph(), name="qca", segmentation={"measurements": ["vessel-qca"]}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in pkg.iterdir():
            zf.write(f, f.name)
    r = client.post(
        "/api/v1/models",
        headers=admin_headers,
        files={"file": ("qca.zip", buf.getvalue(), "application/zip")},
    )
    assert r.status_code == 201, r.text
    assert (
        client.post("/api/v1/models/qca/versions/1.0.0/activate", headers=admin_headers).status_code
        == 200
    )
    return "qca"


def test_vessel_qca_measures_the_stenosis_in_mm(client, clinician_headers, qca_model):
    img = stenosed_tube()
    data = dicom_bytes(img.astype(np.float32) / 255, modality="XA", PixelSpacing=[0.25, 0.25])
    r = predict(client, clinician_headers, qca_model, "a.dcm", data, "application/dicom")
    assert r.status_code == 200, r.text
    qca = r.json()["predictions"][0]["measurements"]["vessel-qca"]
    assert qca["unit"] == "mm" and "unit_note" not in qca
    (stenosis,) = qca["stenoses"]
    assert stenosis["percent_stenosis"] == pytest.approx(60, abs=8)
    # the mask comes through a 64 x 64 model grid (4x coarser): edges move by a pixel or so
    assert stenosis["rvd"] == pytest.approx(20 * 0.25, abs=0.75)
    assert stenosis["position"]["x"] == pytest.approx(130, abs=8)
    # a PNG has no spacing: the same figures in pixels, and the reply says why
    r = predict(client, clinician_headers, qca_model, "a.png", png(img), "image/png")
    qca = r.json()["predictions"][0]["measurements"]["vessel-qca"]
    assert qca["unit"] == "px" and "no pixel spacing" in qca["unit_note"]
    assert qca["stenoses"][0]["rvd"] == pytest.approx(20, abs=3)


def test_no_vessel_means_no_measurement_and_no_error(client, clinician_headers, qca_model):
    blank = png(np.full((64, 64), 230, np.uint8))
    r = predict(client, clinician_headers, qca_model, "blank.png", blank, "image/png")
    assert r.status_code == 200, r.text
    qca = r.json()["predictions"][0]["measurements"]["vessel-qca"]
    assert qca["stenoses"] == [] and qca["segments"] == [] and "no vessel" in qca["message"]


def test_the_case_page_lists_the_stenoses(app, client, clinician_headers, qca_model):
    from fastapi.testclient import TestClient

    from tests.conftest import ADMIN_PASSWORD
    from tests.web.test_pages import web_login

    r = predict(client, clinician_headers, qca_model, "a.png", png(stenosed_tube()), "image/png")
    browser = TestClient(app, raise_server_exceptions=False)  # the app is already running
    assert web_login(browser, "admin", ADMIN_PASSWORD).status_code == 303
    page = browser.get(f"/cases/{r.json()['case_id']}")
    browser.close()
    assert page.status_code == 200
    assert 'data-testid="stenoses"' in page.text and "the image has no pixel spacing" in page.text


def test_reviewers_accept_or_reject_each_finding(
    app, client, clinician_headers, viewer_headers, admin_headers, qca_model
):
    r = predict(client, clinician_headers, qca_model, "a.png", png(stenosed_tube()), "image/png")
    pred = r.json()["predictions"][0]
    url = f"/api/v1/predictions/{pred['id']}/findings"
    r = client.post(
        f"{url}/0/review",
        headers=clinician_headers,
        json={"accept": False, "comment": "foreshortened view"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["finding"] == 0 and r.json()["accept"] is False and r.json()["user"]
    assert (
        client.post(f"{url}/5/review", headers=clinician_headers, json={"accept": True}).status_code
        == 404
    )
    assert (
        client.post(f"{url}/0/review", headers=viewer_headers, json={"accept": True}).status_code
        == 403
    )
    bad = client.post(f"{url}/0/review", headers=clinician_headers, json={"accept": "yes"})
    assert bad.status_code == 422
    case_id = client.get("/api/v1/cases?limit=1", headers=clinician_headers).json()["items"][0][
        "id"
    ]
    case = client.get(f"/api/v1/cases/{case_id}", headers=clinician_headers).json()
    (stored,) = case["images"][0]["predictions"]
    assert [(f["finding"], f["accept"], f["comment"]) for f in stored["finding_reviews"]] == [
        (0, False, "foreshortened view")
    ]
    events = client.get("/api/v1/audit?action=finding.review", headers=admin_headers).json()
    assert events["total"] == 1 and events["items"][0]["details"]["accept"] is False

    # the case page's buttons do the same
    from fastapi.testclient import TestClient

    from tests.conftest import ADMIN_PASSWORD
    from tests.web.test_pages import csrf_of, web_login

    browser = TestClient(app, raise_server_exceptions=False)  # the app is already running
    assert web_login(browser, "admin", ADMIN_PASSWORD).status_code == 303
    page = browser.get(f"/cases/{case['id']}")
    assert 'data-testid="finding-review-0"' in page.text
    form_url = f"/cases/{case['id']}/predictions/{pred['id']}/findings/0/review"
    r = browser.post(
        form_url,
        data={"csrf_token": csrf_of(page.text), "verdict": "accept", "comment": "agreed"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text[:300]
    page = browser.get(f"/cases/{case['id']}")
    assert "Accepted" in page.text and "agreed" in page.text
    r = browser.post(form_url, data={"verdict": "accept"}, follow_redirects=False)
    assert r.status_code in (403, 422) and "Accepted" in browser.get(f"/cases/{case['id']}").text
    browser.close()
