"""Bulk access to patient data is audited: case lists (the filters and how many rows came back,
never the rows), heatmaps, dataset item images and feature previews."""

from __future__ import annotations

import json

from tests.conftest import png_bytes
from tests.datasets.test_datasets_api import class_zip, zip_bytes
from tests.training.test_sensor_streams import stream_csv
from tests.training.test_training_runs import upload


def _events(client, admin_headers, action: str) -> list[dict]:
    r = client.get("/api/v1/audit", params={"action": action, "limit": 100}, headers=admin_headers)
    assert r.status_code == 200
    return r.json()["items"]


def test_case_lists_and_heatmaps_are_audited(client, admin_headers, clinician_headers):
    r = client.post(
        "/api/v1/predict",
        headers=clinician_headers,
        data={"patient_ref": "MRN-0042"},
        files=[("file", ("x.png", png_bytes(), "image/png"))],
    )
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    r = client.get(
        "/api/v1/cases",
        params={"label": pred["top_label"], "since": "2020-01-01T00:00:00", "limit": 5},
        headers=clinician_headers,
    )
    assert r.status_code == 200 and r.json()["total"] == 1
    (listed,) = _events(client, admin_headers, "case.list")
    assert listed["actor"].startswith("clinician")
    assert listed["details"]["returned"] == 1 and listed["details"]["total"] == 1
    assert listed["details"]["filters"]["label"] == pred["top_label"]
    assert "since" in listed["details"]["filters"]
    assert "MRN-0042" not in json.dumps(listed)  # never the rows
    heat = client.get(f"/api/v1/predictions/{pred['id']}/heatmap.png", headers=clinician_headers)
    assert heat.status_code == 200
    (seen,) = _events(client, admin_headers, "heatmap.view")
    assert seen["object_id"] == pred["id"] and seen["object_type"] == "prediction"


def test_the_web_case_list_is_audited(client, admin_headers):
    from tests.conftest import ADMIN_PASSWORD
    from tests.web.test_pages import web_login

    assert web_login(client, "admin", ADMIN_PASSWORD).status_code in (302, 303)
    assert client.get("/cases?label=pneumonia").status_code == 200
    (listed,) = _events(client, admin_headers, "case.list")
    assert listed["actor"] == "admin" and listed["details"]["returned"] == 0
    assert listed["details"]["filters"] == {"label": "pneumonia"}


def test_dataset_items_and_feature_previews_are_audited(client, admin_headers):
    ds = upload(client, admin_headers, "pets", zip_bytes(class_zip({"cat": 3, "dog": 3})))
    r = client.get(f"/api/v1/datasets/{ds['id']}/items/0/image.png", headers=admin_headers)
    assert r.status_code == 200
    (item,) = _events(client, admin_headers, "dataset.item_view")
    assert item["object_id"] == ds["id"] and item["details"] == {"item": 0}
    table = upload(
        client,
        admin_headers,
        "gait",
        stream_csv(),
        filename="gait.csv",
        target="label",
        time_column="t",
        group_column="rec",
    )
    r = client.get(
        f"/api/v1/datasets/{table['id']}/features/preview?limit=3", headers=admin_headers
    )
    assert r.status_code == 200, r.text
    (prev,) = _events(client, admin_headers, "features.preview")
    assert prev["object_id"] == table["id"] and prev["details"]["returned"] == 3
