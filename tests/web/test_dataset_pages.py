"""The dataset pages (/datasets, /datasets/{ref}): importing through the form, the class balance,
sample images and column summaries, rejected uploads, roles and CSRF."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tests.conftest import chest_like, png_bytes
from tests.web.test_pages import csrf_of

IMG = re.compile(r'<img src="(/api/v1/datasets/[0-9a-f]+/items/\d+/image\.png)" alt="[^"]+"')
BALANCE_ROW = re.compile(r'data-testid="balance-row" data-split="(\w+)">(.*?)</tr>', re.S)
NUMBER_CELL = re.compile(r'<td class="num mono[^"]*">([^<]*)</td>')
DASH = "\u2013"


def class_zip(classes: tuple[str, ...] = ("normal", "pneumonia"), per_class: int = 12) -> bytes:
    """A .zip of <class>/<image>.png folders; every image different (no duplicate warnings)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for ci, label in enumerate(classes):
            for i in range(per_class):
                zf.writestr(f"{label}/{i:03d}.png", png_bytes(chest_like(32, seed=100 * ci + i)))
    return buf.getvalue()


def table_csv(rows: int = 40) -> bytes:
    lines = ["age,sex,label"]
    for i in range(rows):
        lines.append(f"{20 + i},{'f' if i % 3 else 'm'},{'sick' if i % 2 else 'well'}")
    return ("\n".join(lines) + "\n").encode()


def import_form(
    c: TestClient, data: bytes, filename: str = "upload.zip", *, token: str | None = None, **fields
) -> Response:
    form = {"csrf_token": csrf_of(c.get("/datasets").text) if token is None else token, **fields}
    return c.post(
        "/datasets",
        data=form,
        files=[("file", (filename, data, "application/octet-stream"))],
        follow_redirects=False,
    )


def dataset_total(client: TestClient, headers: dict[str, str]) -> int:
    r = client.get("/api/v1/datasets", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["total"]


def balance(html: str) -> dict[str, list[str]]:
    """split -> the numbers of its class-balance row (each class, then the total)."""
    return {split: NUMBER_CELL.findall(row) for split, row in BALANCE_ROW.findall(html)}


def assert_no_inline_code(r: Response) -> None:
    csp = r.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "style-src 'self'" in csp
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)
    assert "<style" not in r.text and " style=" not in r.text
    assert not re.search(r"\son[a-z]+=", r.text)


def test_admin_imports_image_zip_through_the_form(sign_in, client, admin_headers):
    admin = sign_in("admin")
    licence = "CC BY 4.0 <Yang et al., MedMNIST v2>"
    r = import_form(admin, class_zip(), "chest.zip", name="chest-small", license=licence)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert re.fullmatch(r"/datasets/[0-9a-f]{32}", location)
    ds = client.get(f"/api/v1{location}", headers=admin_headers).json()
    assert ds["name"] == "chest-small" and ds["n_items"] == 24 and ds["created_by"] == "admin"
    assert ds["info"]["license"] == licence  # the form's licence is stored like the API's

    page = admin.get(location)
    assert page.status_code == 200
    html = page.text
    assert 'data-testid="dataset-name">chest-small<' in html
    assert ds["content_hash"] in html and ">normal<" in html and ">pneumonia<" in html
    assert 'data-testid="dataset-items">24<' in html
    assert "CC BY 4.0 &lt;Yang et al., MedMNIST v2&gt;</dd>" in html  # shown, escaped
    assert 'data-testid="dataset-channels">1<' in html and "32 \u00d7 32 px" in html
    # the class balance per split, the source's counts, with totals
    counts = ds["counts"]
    assert set(counts) == {"train", "val"}  # no val folder: one is made from train
    want = {
        split: [str(per[c]) for c in ds["classes"]] + [str(sum(per.values()))]
        for split, per in counts.items()
    }
    assert balance(html) == want
    assert counts["val"] == {"normal": 2, "pneumonia": 2}
    assert 'data-testid="balance-total"' in html and ">24</td>" in html
    assert html.count('<rect class="seg seg-c') == 4  # two classes in each of two splits
    assert "made: stratified by class" in html and "15%" in html  # the split recipe
    # warnings are shown (only 2 images per class in val)
    assert 'data-testid="dataset-warnings"' in html and "has only 2 images in val" in html
    # the sample grid: 4 per class in train, all 2 per class in val, served to the same session
    urls = IMG.findall(html)
    assert len(urls) == 4 + 4 + 2 + 2 and len(set(urls)) == len(urls)
    assert all(u.startswith(f"/api/v1/datasets/{ds['id']}/items/") for u in urls)
    for url in urls:
        img = admin.get(url)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert img.content.startswith(b"\x89PNG")
    assert_no_inline_code(page)

    # the page is reachable by name as well, and the list links to it
    assert admin.get("/datasets/chest-small").status_code == 200
    listing = admin.get("/datasets").text
    assert listing.count('data-testid="dataset-row"') == 1
    assert f'href="{location}"' in listing and ds["content_hash"][:12] in listing
    assert f"1{DASH}1 of 1 datasets" in listing
    events = client.get(
        "/api/v1/audit", headers=admin_headers, params={"action": "dataset.import"}
    ).json()["items"]
    assert events[0]["outcome"] == "success" and events[0]["actor"] == "admin"


def test_csv_import_shows_column_summary(sign_in, client, admin_headers):
    admin = sign_in("admin")
    r = import_form(admin, table_csv(), "vitals.csv", name="vitals", target="label")
    assert r.status_code == 303, r.text
    page = admin.get(r.headers["location"])
    assert page.status_code == 200
    html = page.text
    assert 'data-testid="dataset-columns"' in html and 'data-testid="dataset-target">label<' in html
    age = re.search(r'data-column="age">(.*?)</tr>', html, re.S)
    assert age is not None
    cells = NUMBER_CELL.findall(age.group(1))
    assert cells[:4] == ["0", "40", "20", "59"]  # missing, distinct, min, max
    assert cells[4] == "39.5" and float(cells[5]) == pytest.approx(11.54, abs=0.01)
    sex = re.search(r'data-column="sex">(.*?)</tr>', html, re.S)
    assert sex is not None and "categorical" in sex.group(1) and "f, m" in sex.group(1)
    assert re.search(r'data-column="label">.*?>target<', html, re.S)
    assert ">sick<" in html and ">well<" in html
    assert "<img" not in html.split('id="main"')[1]  # no sample grid for a table
    assert sum(int(row[-1]) for row in balance(html).values()) == 40
    assert_no_inline_code(page)

    # names are unique: a second import under the same name is refused with 409
    again = import_form(admin, table_csv(), "vitals.csv", name="vitals", target="label")
    assert again.status_code == 409 and "exists" in again.text
    assert dataset_total(client, admin_headers) == 1


def test_rejected_upload_rerenders_form_and_stores_nothing(
    sign_in, client, admin_headers, settings
):
    admin = sign_in("admin")
    r = import_form(admin, class_zip(("normal",)), "one.zip", name="one-class")
    assert r.status_code == 422
    assert 'data-testid="error-message"' in r.text and "one class" in r.text
    assert 'value="one-class"' in r.text  # the form keeps what was typed
    assert dataset_total(client, admin_headers) == 0
    assert 'data-testid="dataset-row"' not in r.text
    assert not list(Path(settings.data_dir).glob(".dataset-*"))  # the temporary file is gone
    event = client.get(
        "/api/v1/audit", headers=admin_headers, params={"action": "dataset.import"}
    ).json()["items"][0]
    assert event["outcome"] == "rejected" and "one class" in event["details"]["reason"]

    # a CSV without a target column, an empty form and a bad name are refused as well
    no_target = import_form(admin, table_csv(), "t.csv", name="no-target")
    assert no_target.status_code == 422 and "target column" in no_target.text
    assert "--target" not in no_target.text
    token = csrf_of(admin.get("/datasets").text)
    empty = admin.post(
        "/datasets",
        data={"csrf_token": token, "name": "x"},
        files=[("file", ("", b"", "application/octet-stream"))],
        follow_redirects=False,
    )
    assert empty.status_code == 422 and "Choose a dataset file" in empty.text
    bad_name = import_form(admin, class_zip(), name="Bad Name")
    assert bad_name.status_code == 422 and "lower-case" in bad_name.text
    assert dataset_total(client, admin_headers) == 0


def test_viewer_sees_list_without_form_and_cannot_import(sign_in, client, admin_headers):
    admin = sign_in("admin")
    created = import_form(admin, class_zip(), name="shared")
    assert created.status_code == 303
    viewer = sign_in("viewer")
    page = viewer.get("/datasets")
    assert page.status_code == 200
    assert 'data-testid="nav-datasets"' in page.text and 'aria-current="page"' in page.text
    assert 'data-testid="dataset-row"' in page.text
    assert 'data-testid="dataset-import-form"' not in page.text
    # the dataset page and its images work for any signed-in user
    detail = viewer.get(created.headers["location"])
    assert detail.status_code == 200 and 'data-testid="dataset-import-form"' not in detail.text
    url = IMG.findall(detail.text)[0]
    assert viewer.get(url).headers["content-type"] == "image/png"

    token = csrf_of(page.text)
    r = import_form(viewer, class_zip(), token=token, name="sneaky")
    assert r.status_code == 403 and 'data-testid="error-page"' in r.text
    assert dataset_total(client, admin_headers) == 1
    denied = client.get(
        "/api/v1/audit", headers=admin_headers, params={"action": "access.denied"}
    ).json()["items"]
    assert denied[0]["details"]["path"] == "/datasets" and denied[0]["details"]["via"] == "web"


@pytest.mark.parametrize("token", ["", "0" * 64, "other-session"])
def test_import_without_valid_csrf_is_refused(sign_in, client, admin_headers, token):
    admin = sign_in("admin")
    if token == "other-session":
        token = csrf_of(sign_in("admin").get("/datasets").text)
    r = import_form(admin, class_zip(), token=token, name="no-csrf")
    assert r.status_code == 403 and "could not be verified" in r.text
    missing = admin.post(
        "/datasets",
        data={"name": "no-csrf"},
        files=[("file", ("a.zip", class_zip(), "application/zip"))],
        follow_redirects=False,
    )
    assert missing.status_code == 403
    assert dataset_total(client, admin_headers) == 0


def test_unknown_dataset_is_a_404_page(sign_in):
    c = sign_in("viewer")
    for ref in ("0" * 32, "no-such-dataset"):
        r = c.get(f"/datasets/{ref}")
        assert r.status_code == 404 and 'data-testid="error-page"' in r.text
        assert "Dataset not found" in r.text


def test_dataset_pages_need_sign_in(client):
    for path in ("/datasets", "/datasets/anything"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    r = client.post(
        "/datasets", files=[("file", ("a.csv", table_csv(), "text/csv"))], follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_dataset_list_pagination(sign_in, monkeypatch):
    monkeypatch.setattr("clearscan.web.pages.datasets.PAGE_SIZE", 1)
    admin = sign_in("admin")
    for name in ("first", "second"):
        assert import_form(admin, table_csv(), name=name, target="label").status_code == 303
    page1 = admin.get("/datasets")
    assert page1.text.count('data-testid="dataset-row"') == 1
    assert 'data-name="second"' in page1.text  # newest first
    assert f"1{DASH}1 of 2 datasets" in page1.text and 'href="?page=2"' in page1.text
    assert_no_inline_code(page1)
    page2 = admin.get("/datasets?page=2")
    assert 'data-name="first"' in page2.text and f"2{DASH}2 of 2 datasets" in page2.text


def test_table_dataset_page_shows_features_and_importance(client, admin_headers, sign_in):
    """The features a run would use (windowed for a sensor stream) and, after training, the
    feature importance of the model."""
    from tests.training.test_sensor_streams import stream_csv
    from tests.training.test_training_runs import train, upload

    upload(
        client,
        admin_headers,
        "gait-page",
        stream_csv(),
        filename="g.csv",
        target="label",
        time_column="t",
        group_column="rec",
    )
    browser = sign_in("admin")
    page = browser.get("/datasets/gait-page")
    assert page.status_code == 200
    assert 'data-testid="features-table"' in page.text and "ax_dominant_freq" in page.text
    assert "84 rows of 18 features" in page.text
    assert 'data-testid="importance-table"' not in page.text
    result = train(client, admin_headers, dataset="gait-page")["result"]
    page = browser.get("/datasets/gait-page")
    assert 'data-testid="importance-table"' in page.text and result["model"] in page.text
