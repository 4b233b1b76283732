"""The datasets API: admin-only import (multipart), listing, detail by id or name, sample images,
409 on a taken name, 422 (never 500) naming the problem with nothing stored, and the audit."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import png_bytes

URL = "/api/v1/datasets"


def gray(rng: np.random.Generator, size: int = 16) -> bytes:
    return png_bytes(rng.random((size, size)))


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def class_zip(sizes: dict[str, int], prefix: str = "ds/", seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"{prefix}{c}/{i:03d}.png": gray(rng) for c, n in sizes.items() for i in range(n)}


def upload(client, headers, data: bytes, filename: str = "data.zip", **form):
    return client.post(
        URL,
        headers=headers,
        data=form,
        files={"file": (filename, data, "application/octet-stream")},
    )


def blob_files(app) -> set[str]:
    root: Path = app.state.clearscan.settings.blob_dir
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def temp_leftovers(app) -> list[str]:
    return [p.name for p in app.state.clearscan.settings.data_dir.glob(".dataset-*")]


def audit_events(client, admin_headers) -> list[dict]:
    r = client.get("/api/v1/audit?action=dataset.import&limit=200", headers=admin_headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_import_list_detail_samples_and_audit(client, admin_headers, viewer_headers, app):
    r = upload(client, admin_headers, zip_bytes(class_zip({"cat": 12, "dog": 14})), name="pets")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "pets" and body["kind"] == "images" and body["source_format"] == "folder"
    assert body["classes"] == ["cat", "dog"] and body["n_items"] == 26
    assert set(body["counts"]) == {"train", "val"}
    assert sum(sum(per.values()) for per in body["counts"].values()) == 26
    assert body["info"]["splits"]["validation"].startswith("made")
    assert body["created_by"] == "admin" and len(body["content_hash"]) == 64
    assert isinstance(body["warnings"], list)
    assert "csv_blob" not in body["info"] and "split_blob" not in body["info"]

    samples = body["samples"]
    assert {(s["split"], s["label"]) for s in samples} == {
        ("train", "cat"),
        ("train", "dog"),
        ("val", "cat"),
        ("val", "dog"),
    }
    for s in samples:
        assert s["image_url"] == f"{URL}/{body['id']}/items/{s['idx']}/image.png"
        img = client.get(s["image_url"], headers=viewer_headers)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(img.content)).size == (16, 16)
    assert client.get(samples[0]["image_url"]).status_code == 401
    missing_item = client.get(f"{URL}/{body['id']}/items/26/image.png", headers=viewer_headers)
    assert missing_item.status_code == 404

    listing = client.get(URL, headers=viewer_headers)
    assert listing.status_code == 200
    assert listing.json()["total"] == 1
    assert [d["name"] for d in listing.json()["items"]] == ["pets"]
    assert listing.json()["items"][0]["counts"] == body["counts"]

    by_name = client.get(f"{URL}/pets", headers=viewer_headers)
    by_id = client.get(f"{URL}/{body['id']}", headers=viewer_headers)
    assert by_name.status_code == by_id.status_code == 200
    assert by_name.json()["id"] == by_id.json()["id"] == body["id"]
    assert by_id.json()["content_hash"] == body["content_hash"]
    nope = client.get(f"{URL}/0123456789abcdef0123456789abcdef", headers=viewer_headers)
    assert nope.status_code == 404 and "not found" in nope.json()["detail"]
    assert client.get(f"{URL}/nope/items/0/image.png", headers=viewer_headers).status_code == 404

    events = audit_events(client, admin_headers)
    assert len(events) == 1
    ev = events[0]
    assert ev["outcome"] == "success" and ev["actor"] == "admin"
    assert ev["object_type"] == "dataset" and ev["object_id"] == body["id"]
    assert ev["details"]["name"] == "pets" and ev["details"]["items"] == 26
    assert temp_leftovers(app) == []


def test_only_admins_import(client, clinician_headers, viewer_headers, app):
    data = zip_bytes(class_zip({"a": 6, "b": 6}))
    before = blob_files(app)
    for headers in (clinician_headers, viewer_headers):
        assert upload(client, headers, data, name="sneaky").status_code == 403
    assert upload(client, {}, data, name="sneaky").status_code == 401
    assert client.get(URL, headers=viewer_headers).json()["total"] == 0
    assert blob_files(app) == before


def test_taken_name_is_409(client, admin_headers, app):
    assert (
        upload(client, admin_headers, zip_bytes(class_zip({"a": 6, "b": 6})), name="x").status_code
        == 201
    )
    other = zip_bytes(class_zip({"c": 6, "d": 6}, seed=1))
    before = blob_files(app)
    r = upload(client, admin_headers, other, name="x")
    assert r.status_code == 409 and "exists" in r.json()["detail"]
    listing = client.get(URL, headers=admin_headers).json()
    assert listing["total"] == 1 and listing["items"][0]["classes"] == ["a", "b"]
    assert blob_files(app) == before


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _mixed_channels() -> bytes:
    files = class_zip({"a": 4, "b": 4})
    files["ds/b/colour.png"] = png_bytes(np.random.default_rng(1).random((16, 16, 3)))
    return zip_bytes(files)


def _not_an_image() -> bytes:
    files = class_zip({"a": 4, "b": 4})
    files["ds/a/notes.txt"] = b"hello, not pixels"
    return zip_bytes(files)


def _zip_slip() -> bytes:
    files = class_zip({"a": 4, "b": 4}, prefix="")
    files["../evil.png"] = gray(np.random.default_rng(2))
    return zip_bytes(files)


def _mixed_layouts() -> bytes:
    files = class_zip({"a": 4, "b": 4}, prefix="train/")
    files.update(class_zip({"c": 4}, prefix="", seed=3))
    return zip_bytes(files)


CSV = "x,z,label\n" + "".join(f"{i},{i * 0.5},{'ab'[i % 2]}\n" for i in range(20))
NON_NUMERIC = CSV.replace("\n7,3.5,b\n", "\n7,abc,b\n")
RAGGED = np.array([np.zeros(3), np.zeros(4)], dtype=object)

BAD = {
    "one-class": (zip_bytes(class_zip({"only": 6})), {}, ["one class"]),
    # folder (class) names, never a file name: it may name a patient
    "mixed-channels": (_mixed_channels(), {}, ["mixed channel", "class 'b'"]),
    "not-an-image": (_not_an_image(), {}, ["a file in 'a'"]),
    "zip-slip": (_zip_slip(), {}, ["outside"]),
    "mixed-layouts": (_mixed_layouts(), {}, ["mixed layouts"]),
    "pickle": (pickle.dumps({"a": 1}, protocol=4), {}, ["pickle"]),
    "random-bytes": (b"\x17" + np.random.default_rng(0).bytes(6000), {}, ["not a dataset"]),
    "csv-no-target-option": (CSV.encode(), {}, ["target column"]),
    "csv-unknown-target": (CSV.encode(), {"target": "diagnosis"}, ["'diagnosis'", "x, z, label"]),
    "csv-non-numeric": (NON_NUMERIC.encode(), {"target": "label"}, ["'z'", "row 9", "non-numeric"]),
    "csv-empty": (b"", {"target": "label"}, ["empty"]),
    "csv-header-only": (b"x,z,label\n", {"target": "label"}, ["no rows"]),
    "npz-no-train": (
        _npz(val_images=np.zeros((4, 8, 8), np.uint8), val_labels=np.zeros((4, 1), np.uint8)),
        {},
        ["train_images"],
    ),
    "npz-object": (
        _npz(train_images=RAGGED, train_labels=np.array([0, 1])),
        {},
        ["train_images", "object"],
    ),
    "npz-too-few-labels": (
        _npz(train_images=np.zeros((6, 8, 8), np.uint8), train_labels=np.arange(6) % 3),
        {"labels": "a,b"},
        ["labels", "2"],
    ),
    "bad-name": (zip_bytes(class_zip({"a": 4, "b": 4})), {"name": "Bad Name!"}, ["name"]),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_uploads_are_422_store_nothing_and_are_audited(client, admin_headers, app, kind):
    data, form, words = BAD[kind]
    form = {"name": "bad", **form}
    before = blob_files(app)
    r = upload(client, admin_headers, data, **form)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    for w in words:
        assert w in detail, (w, detail)
    assert client.get(URL, headers=admin_headers).json()["total"] == 0
    assert blob_files(app) == before
    assert temp_leftovers(app) == []
    assert not (app.state.clearscan.settings.data_dir.parent / "evil.png").exists()
    events = audit_events(client, admin_headers)
    assert [e["outcome"] for e in events] == ["rejected"]
    assert events[0]["details"]["reason"] == detail[:500]


def test_csv_and_npz_form_options(client, admin_headers, viewer_headers):
    rng = np.random.default_rng(4)
    lines = ["t,ax,label,rec"]
    for r in range(12):
        for t in range(20):
            lines.append(f"{t},{rng.normal():.3f},{'ab'[r % 2]},r{r}")
    r = upload(
        client,
        admin_headers,
        ("\n".join(lines) + "\n").encode(),
        filename="stream.csv",
        name="stream",
        target="label",
        time_column="t",
        group_column="rec",
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "table" and body["n_items"] == 240 and body["samples"] == []
    assert body["info"]["group_column"] == "rec" and body["info"]["time_column"] == "t"
    assert {c["name"] for c in body["info"]["columns"]} == {"t", "ax", "label", "rec"}
    assert "whole groups" in body["info"]["splits"]["validation"]
    assert body["counts"]["val"] == {"a": 20, "b": 20}
    assert "csv_blob" not in body["info"] and "split_blob" not in body["info"]

    images = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    data = _npz(train_images=images, train_labels=(np.arange(20) % 2).reshape(20, 1))
    r = upload(client, admin_headers, data, filename="m.npz", name="mnist", labels="neg, pos")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["source_format"] == "npz" and body["classes"] == ["neg", "pos"]
    first = next(s for s in body["samples"] if s["idx"] == 0)
    png = client.get(first["image_url"], headers=viewer_headers)
    assert png.status_code == 200
    assert Image.open(io.BytesIO(png.content)).size == (8, 8)


def test_concurrent_import_of_the_same_name_is_409(client, admin_headers, app, monkeypatch):
    from clearscan.audit.service import RequestContext
    from clearscan.datasets import service
    from clearscan.imaging import Limits

    state = app.state.clearscan
    data = zip_bytes(class_zip({"a": 6, "b": 6}))
    real = service.detect_format

    def racing(path: Path) -> str:
        monkeypatch.setattr(service, "detect_format", real)
        with state.sessions() as other:  # another request with the same name commits first
            service.import_dataset(
                db=other,
                blobs=state.blobs,
                ctx=RequestContext(actor="other"),
                source=path,
                options=service.ImportOptions(name="race"),
                limits=Limits(),
                max_bytes=2**30,
            )
        return real(path)

    monkeypatch.setattr(service, "detect_format", racing)
    r = upload(client, admin_headers, data, name="race")
    assert r.status_code == 409, r.text
