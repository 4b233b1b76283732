"""Patient data is never cached: every API route that answers a file (original uploads, previews,
heatmaps, dataset items, evaluation reports) sends `Cache-Control: no-store` and
`Pragma: no-cache`, and so does the API's JSON."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from clearscan.api.responses import PHIResponse
from clearscan.api.router import API_PREFIX, API_ROUTERS
from clearscan.training import service as training_service
from tests.conftest import png_bytes
from tests.datasets.test_datasets_api import class_zip, zip_bytes

# Every file route of the API must be here (the test fails on a new one until it is added).
FILE_ROUTES = {
    "/api/v1/images/{image_id}/file",
    "/api/v1/images/{image_id}/preview.png",
    "/api/v1/predictions/{prediction_id}/heatmap.png",
    "/api/v1/predictions/{prediction_id}/mask.png",
    "/api/v1/predictions/{prediction_id}/segmentation.dcm",
    "/api/v1/predictions/{prediction_id}/report.dcm",
    "/api/v1/predictions/{prediction_id}/secondary-capture.dcm",
    "/api/v1/datasets/{dataset_id}/items/{idx}/image.png",
    "/api/v1/evaluations/{eval_id}/report.html",
    "/api/v1/images/{image_id}/original",
    "/api/v1/audit/export",
}
# needs CLEARSCAN_KEEP_ORIGINALS and a DICOM upload: checked in tests/cases/test_deid_api.py
# a segmentation model's prediction: tests/cases/test_segmentation_api.py, test_dicom_exports.py
ELSEWHERE = {
    "/api/v1/images/{image_id}/original",
    "/api/v1/predictions/{prediction_id}/mask.png",
    "/api/v1/predictions/{prediction_id}/segmentation.dcm",
    "/api/v1/predictions/{prediction_id}/report.dcm",
    "/api/v1/predictions/{prediction_id}/secondary-capture.dcm",
}


def file_routes() -> set[str]:
    """GET routes of the API that answer something other than JSON."""
    found = set()
    for router in API_ROUTERS:
        for route in router.routes:
            if not isinstance(route, APIRoute) or "GET" not in (route.methods or ()):
                continue
            cls = route.response_class  # the default (JSON) is a placeholder, not a class
            if isinstance(cls, type) and not issubclass(cls, JSONResponse):
                found.add(API_PREFIX + route.path)
    return found


def assert_no_store(r, what: str) -> None:
    assert r.headers.get("cache-control") == "no-store", (what, r.headers.get("cache-control"))
    assert r.headers.get("pragma") == "no-cache", what
    assert "max-age" not in r.headers.get("cache-control", ""), what


def test_every_file_route_is_sent_no_store(client, admin_headers, monkeypatch):
    assert file_routes() == FILE_ROUTES
    r = client.post(
        "/api/v1/predict",
        headers=admin_headers,
        files=[("file", ("x.png", png_bytes(), "image/png"))],
        data={"explain": "true"},
    )
    assert r.status_code == 200, r.text
    (prediction,) = r.json()["predictions"]
    case = client.get(f"/api/v1/cases/{r.json()['case_id']}", headers=admin_headers).json()
    r = client.post(
        "/api/v1/datasets",
        headers=admin_headers,
        data={"name": "pets"},
        files={"file": ("d.zip", zip_bytes(class_zip({"cat": 4, "dog": 4})), "application/zip")},
    )
    assert r.status_code == 201, r.text
    # a stored report needs a whole evaluation run; the route's headers are what is checked
    monkeypatch.setattr(training_service, "evaluation_report", lambda **_: "<html>report</html>")
    params = {
        "image_id": case["images"][0]["id"],
        "prediction_id": prediction["id"],
        "dataset_id": r.json()["id"],
        "idx": "0",
        "eval_id": "0" * 32,
    }
    for template in sorted(FILE_ROUTES - ELSEWHERE):
        names = re.findall(r"{(\w+)}", template)
        assert set(names) <= set(params), f"no test value for a parameter of {template}"
        path = template.format(**params)
        r = client.get(path, headers=admin_headers)
        assert r.status_code == 200, (path, r.text)
        assert_no_store(r, path)


def test_api_json_is_no_store_and_probes_are_unchanged(client, admin_headers):
    assert_no_store(client.get("/api/v1/cases", headers=admin_headers), "cases")
    assert_no_store(client.get("/api/v1/cases"), "a 401")
    assert "cache-control" not in client.get("/healthz").headers
    assert "cache-control" not in client.get("/readyz").headers


def test_phi_response_replaces_any_caching_header():
    r = PHIResponse(
        b"x",
        media_type="image/png",
        headers={"cache-control": "private, max-age=3600", "Pragma": "x", "X-Other": "1"},
    )
    assert r.headers.getlist("cache-control") == ["no-store"]
    assert r.headers.getlist("pragma") == ["no-cache"]
    assert r.headers["x-other"] == "1"
