"""A segmentation prediction as DICOM objects through the API: the Segmentation references the
analysed image's UIDs (frame by frame for a multi-frame source) and holds its label map exactly;
the SR holds the QCA values and references the SEG and the image; a PNG upload gets a Secondary
Capture they reference. Read back with highdicom and pydicom; the same prediction gives the same
objects; PHI headers, audit, 404s."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import dcmread

from tests.api.test_no_store import assert_no_store
from tests.cases.test_segmentation_api import predict, qca_model, stenosed_tube  # noqa: F401
from tests.conftest import dicom_bytes
from tests.inference.test_segmentation import png

API = "/api/v1/predictions"


def label_map(client, headers, pred) -> np.ndarray:
    r = client.get(pred["mask_url"], headers=headers)
    return np.asarray(PILImage.open(io.BytesIO(r.content)))


def get_dcm(client, headers, pred_id: str, path: str):
    r = client.get(f"{API}/{pred_id}/{path}", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    assert "attachment" in r.headers["content-disposition"]
    assert_no_store(r, path)
    return r.content


def seg_pixels(seg_bytes: bytes, source_sop: str, frames: int = 1) -> np.ndarray:
    seg = hd.seg.segread(io.BytesIO(seg_bytes))
    if frames == 1:
        return seg.get_pixels_by_source_instance([source_sop], combine_segments=True)[0].astype(
            np.uint8
        )
    return seg.get_pixels_by_source_frame(
        source_sop, list(range(1, frames + 1)), combine_segments=True
    ).astype(np.uint8)


def test_seg_and_sr_of_a_dicom_source(client, clinician_headers, admin_headers, qca_model):  # noqa: F811
    img = stenosed_tube()
    data = dicom_bytes(img.astype(np.float32) / 255, modality="XA", PixelSpacing=[0.25, 0.25])
    r = predict(client, clinician_headers, qca_model, "a.dcm", data, "application/dicom")
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    stored = client.get(
        f"/api/v1/images/{pred['image_id']}/file", headers=clinician_headers
    ).content
    source = dcmread(io.BytesIO(stored))  # the de-identified image the case keeps

    seg_bytes = get_dcm(client, clinician_headers, pred["id"], "segmentation.dcm")
    seg = dcmread(io.BytesIO(seg_bytes))
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert np.array_equal(
        seg_pixels(seg_bytes, source.SOPInstanceUID), label_map(client, clinician_headers, pred)
    )
    assert "PID-4711" not in str(seg) and "Doe" not in str(seg)

    sr_bytes = get_dcm(client, clinician_headers, pred["id"], "report.dcm")
    sr = hd.sr.srread(io.BytesIO(sr_bytes))
    text = str(dcmread(io.BytesIO(sr_bytes)))
    assert seg.SOPInstanceUID in text and source.SOPInstanceUID in text
    stenosis = pred["measurements"]["vessel-qca"]["stenoses"][0]
    values = [
        float(item.MeasuredValueSequence[0].NumericValue)
        for item in sr.ContentSequence[-1].ContentSequence[0].ContentSequence
        if item.ValueType == "NUM"
    ]
    assert any(v == pytest.approx(stenosis["percent_stenosis"], abs=0.05) for v in values)
    assert any(v == pytest.approx(stenosis["mld"], abs=1e-3) for v in values)
    # the same prediction gives the same objects; a DICOM source needs no secondary capture
    again = client.get(f"{API}/{pred['id']}/segmentation.dcm", headers=clinician_headers).content
    assert dcmread(io.BytesIO(again)).SOPInstanceUID == seg.SOPInstanceUID
    r = client.get(f"{API}/{pred['id']}/secondary-capture.dcm", headers=clinician_headers)
    assert r.status_code == 404
    events = client.get("/api/v1/audit?action=dicom.export", headers=admin_headers).json()
    assert [e["details"]["object"] for e in events["items"]][::-1][:2] == ["seg", "sr"]


def test_a_png_upload_gets_a_secondary_capture_the_seg_references(
    client,
    clinician_headers,
    qca_model,  # noqa: F811
):
    r = predict(client, clinician_headers, qca_model, "a.png", png(stenosed_tube()), "image/png")
    pred = r.json()["predictions"][0]
    sc = dcmread(
        io.BytesIO(get_dcm(client, clinician_headers, pred["id"], "secondary-capture.dcm"))
    )
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.Rows == 120 and sc.Columns == 260
    seg_bytes = get_dcm(client, clinician_headers, pred["id"], "segmentation.dcm")
    seg = dcmread(io.BytesIO(seg_bytes))
    assert seg.StudyInstanceUID == sc.StudyInstanceUID
    assert np.array_equal(
        seg_pixels(seg_bytes, sc.SOPInstanceUID), label_map(client, clinician_headers, pred)
    )
    sr = dcmread(io.BytesIO(get_dcm(client, clinician_headers, pred["id"], "report.dcm")))
    assert sc.SOPInstanceUID in str(sr)


def test_multiframe_source_frames_stay_aligned(client, clinician_headers, qca_model):  # noqa: F811
    img = stenosed_tube(h=64, w=96, r=6)
    base = dcmread(io.BytesIO(dicom_bytes(img.astype(np.float32) / 255, modality="XA")))
    frames = np.stack([np.full(img.shape, 60000, np.uint16)] * 5)
    frames[2] = (img.astype(np.float32) / 255 * 65535).astype(np.uint16)  # the middle frame
    base.NumberOfFrames = 5
    base.PixelData = frames.tobytes()
    buf = io.BytesIO()
    base.save_as(buf, enforce_file_format=True)
    r = predict(
        client, clinician_headers, qca_model, "cine.dcm", buf.getvalue(), "application/dicom"
    )
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    seg_bytes = get_dcm(client, clinician_headers, pred["id"], "segmentation.dcm")
    stored = dcmread(
        io.BytesIO(
            client.get(f"/api/v1/images/{pred['image_id']}/file", headers=clinician_headers).content
        )
    )
    pixels = seg_pixels(seg_bytes, stored.SOPInstanceUID, frames=5)
    assert pixels.shape[0] == 5 and not pixels[[0, 1, 3, 4]].any()
    assert np.array_equal(pixels[2], label_map(client, clinician_headers, pred))


def test_classifications_have_no_dicom_objects(client, clinician_headers):
    r = predict(
        client, clinician_headers, "pneumonia-cxr", "a.png", png(stenosed_tube()), "image/png"
    )
    pid = r.json()["predictions"][0]["id"]
    for path in ("segmentation.dcm", "report.dcm", "secondary-capture.dcm"):
        r = client.get(f"{API}/{pid}/{path}", headers=clinician_headers)
        assert r.status_code == 404 and "not a segmentation" in r.json()["detail"]
