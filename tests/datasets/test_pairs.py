"""Segmentation datasets from image + mask pairs (images/ and masks/ folders, optionally under
split folders), through POST /api/v1/datasets: matched by name, checked (every image has its mask,
same size, values within the labels), masks stored as 8-bit label maps, empty masks warned, and
what is wrong refused with a message naming folders, never files, with nothing stored."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from clearscan.datasets.models import DatasetItem
from tests.conftest import chest_like, dicom_bytes, png_bytes
from tests.datasets.test_datasets_api import URL, blob_files, upload, zip_bytes


def mask_png(arr: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr.astype(np.uint8 if mode == "L" else np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def stripe(size: int, row: int, value: int = 1) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[row : row + 4, :] = value
    return m


def pairs(n: int, *, size: int = 32, split: str = "") -> dict[str, bytes]:
    pre = f"{split}/" if split else ""
    out = {}
    for i in range(n):
        out[f"{pre}images/{i:03d}.png"] = png_bytes(chest_like(size, i))
        out[f"{pre}masks/{i:03d}.png"] = mask_png(stripe(size, 2 + i % 20))
    return out


def items(app, dataset_id: str) -> list[DatasetItem]:
    with app.state.clearscan.sessions() as db:
        return list(
            db.scalars(
                select(DatasetItem)
                .where(DatasetItem.dataset_id == dataset_id)
                .order_by(DatasetItem.idx)
            )
        )


def test_pairs_import_as_a_segmentation_dataset(client, admin_headers, app):
    files = pairs(12)
    files["masks/005.png"] = mask_png(np.zeros((32, 32)))  # an empty mask: warned
    r = upload(
        client, admin_headers, zip_bytes(files), name="vessels-a", labels="background,vessel"
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["kind"] == "segmentation" and ds["source_format"] == "pairs"
    assert ds["classes"] == ["background", "vessel"] and ds["n_items"] == 12
    assert set(ds["counts"]) == {"train", "val"}  # a validation split is carved out
    assert sum(c["vessel"] for c in ds["counts"].values()) == 11
    assert any("no foreground" in w for w in ds["warnings"])
    stored = app.state.clearscan.blobs
    for item in items(app, ds["id"]):
        label_map = np.asarray(PILImage.open(io.BytesIO(stored.get(item.mask_blob))))
        assert label_map.shape == (item.height, item.width) and label_map.dtype == np.uint8
        assert set(np.unique(label_map)) <= {0, 1}
    assert client.get(f"/api/v1/datasets/{ds['id']}", headers=admin_headers).status_code == 200
    # and its web page renders
    from fastapi.testclient import TestClient

    from tests.conftest import ADMIN_PASSWORD
    from tests.web.test_pages import web_login

    browser = TestClient(app, raise_server_exceptions=False)  # the app is already running
    assert web_login(browser, "admin", ADMIN_PASSWORD).status_code == 303
    page = browser.get(f"/datasets/{ds['name']}")
    browser.close()
    assert page.status_code == 200, page.text[:300]
    assert "segmentation" in page.text and "vessel" in page.text


def test_split_folders_255_masks_dicom_images_and_nifti_masks(client, admin_headers, app):
    files = {**pairs(6, split="train"), **pairs(3, split="val")}
    files["train/masks/000.png"] = mask_png(stripe(32, 5, 255))  # 0/255: binary
    files["val/images/002.dcm"] = dicom_bytes(chest_like(32, 7))  # identifiers removed
    del files["val/images/002.png"]
    vol = np.zeros((32, 32, 3), np.int16)
    vol[10:14, :, :] = 1
    img = nib.Nifti1Image(vol, np.eye(4))
    files["val/masks/002.png"] = b""  # replaced below by a NIfTI mask of the same name
    del files["val/masks/002.png"]
    files["val/masks/002.nii.gz"] = gzip.compress(img.to_bytes())
    r = upload(client, admin_headers, zip_bytes(files), name="vessels-b")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["counts"]["train"]["foreground"] == 6 and ds["counts"]["val"]["foreground"] == 3
    assert ds["info"]["splits"] == {"validation": "from the source"}
    stored = app.state.clearscan.blobs
    for item in items(app, ds["id"]):
        assert b"PID-4711" not in stored.get(item.blob)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda f: f.pop("masks/003.png"), "no mask of the same name in 'masks'"),
        (lambda f: f.pop("images/003.png"), "no image of the same name in 'images'"),
        (
            lambda f: f.__setitem__("masks/003.png", mask_png(np.zeros((16, 32)))),
            "a mask in 'masks' is 32 x 16 pixels, its image 32 x 32",
        ),
        (
            lambda f: f.__setitem__("masks/003.png", mask_png(stripe(32, 3, 2))),
            "holds the value 2, outside the 2 labels",
        ),
        (lambda f: f.__setitem__("notes/readme.txt", b"x"), "outside the images/ and masks/"),
        (
            lambda f: f.__setitem__(
                "masks/003.png", png_bytes(np.random.default_rng(0).random((32, 32, 3)))
            ),
            "one-channel label maps",
        ),
    ],
)
def test_bad_pairs_are_refused_naming_folders_and_store_nothing(
    client, admin_headers, app, edit, words
):
    files = pairs(6)
    edit(files)
    before = blob_files(app)
    r = upload(client, admin_headers, zip_bytes(files), name="bad-pairs")
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"], r.json()["detail"]
    assert "003" not in r.json()["detail"]  # file names may name patients: never echoed
    assert blob_files(app) == before
    assert client.get(URL, headers=admin_headers).json()["total"] == 0


def test_labels_must_be_two_or_more_distinct_names(client, admin_headers):
    r = upload(client, admin_headers, zip_bytes(pairs(4)), name="one-label", labels="vessel")
    assert r.status_code == 422 and "labels" in r.json()["detail"]


def test_segmentation_datasets_are_not_trained_or_evaluated_as_classifiers(client, admin_headers):
    assert upload(client, admin_headers, zip_bytes(pairs(12)), name="segs").status_code == 201
    r = client.post("/api/v1/training-runs", headers=admin_headers, json={"dataset": "segs"})
    assert r.status_code == 422 and "cannot be trained" in r.json()["detail"], r.text
    r = client.post(
        "/api/v1/evaluations",
        headers=admin_headers,
        json={"model": "pneumonia-cxr", "dataset": "segs", "split": "val"},
    )
    assert r.status_code == 422 and "not available yet" in r.json()["detail"], r.text


def test_a_synthetic_angiogram_folder_imports_as_is(client, admin_headers, tmp_path):
    """What `clearscan datasets synth-angio` writes (images/, masks/, stenoses.csv, README.md)
    is a segmentation dataset; the files beside the folders are counted, not imported."""
    from clearscan.datasets.synth_angio import write_dataset

    out = tmp_path / "synth"
    write_dataset(out, n=3, seed=5, size=128)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = upload(client, admin_headers, zip_bytes(files), name="synth", labels="background,vessel")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["kind"] == "segmentation" and ds["n_items"] == 3
    assert any("1 file(s) at the top level" in w for w in ds["warnings"])  # the README
    assert 0.01 < ds["info"]["pixel_share"]["vessel"] < 0.3
    assert ds["info"]["stenoses"] == len((out / "stenoses.csv").read_text().splitlines()) - 1
    assert ds["info"]["stenoses_blob"]


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ("image,percent_stenosis\n999.png,50\n", "line 2 names an image"),
        ("image,percent_stenosis\n000.png,150\n", "line 2: percent_stenosis is not 0-100"),
        ("image,severity\n000.png,50\n", "needs the columns image and percent_stenosis"),
    ],
)
def test_a_wrong_truth_table_is_refused(client, admin_headers, table, words):
    files = {**pairs(4), "stenoses.csv": table.encode()}
    r = upload(client, admin_headers, zip_bytes(files), name="with-truth")
    assert r.status_code == 422 and words in r.json()["detail"], r.text
