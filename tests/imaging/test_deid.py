"""De-identification (DICOM PS3.15 Annex E Basic profile): the golden test builds a DICOM that
carries every attribute of the profile's table, as the ``dicom-anonymizer`` package ships it,
and checks each one against its action code."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pytest
from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table
from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from clearscan.imaging import ImagingError, Limits, decode
from clearscan.imaging.deid import (
    PROFILE_EDITION,
    DeidPolicy,
    date_shift_days,
    deidentify,
    new_uid,
    patient_key,
    profile,
    resolve,
)

KEY = b"k" * 32
LIMITS = Limits()
CODES = {
    "X_TAGS": "X",
    "Z_TAGS": "Z",
    "D_TAGS": "D",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
PATIENT_ID = "MRN-0042-17"
PATIENT_NAME = "Doe^Johnathan"
# every repeating-group row of the table, at one member of its group
GROUP_MEMBERS = {(0x5000, 0x0000): 0x50000005, (0x6000, 0x3000): 0x60023000}
GROUP_MEMBERS[(0x6000, 0x4000)] = 0x60004000


def table_rows() -> list[tuple[int, str]]:
    """(tag, action code) of every row of the profile, straight from the package's table."""
    rows: list[tuple[int, str]] = []
    for category, code in CODES.items():
        for row in getattr(table, category):
            if len(row) == 2:
                rows.append(((row[0] << 16) | row[1], code))
            else:
                rows.append((GROUP_MEMBERS[(row[0], row[1])], code))
    return rows


def vr_of(tag: int) -> str:
    if tag == 0x50000005:
        return "US"
    if tag == 0x60023000:
        return "OW"
    if tag == 0x60004000:
        return "LT"
    if not dictionary_has_tag(tag):  # newer than the installed pydicom's dictionary
        return "LO"
    return dictionary_VR(tag).split(" or ")[0]


def identifying_value(tag: int, vr: str) -> Any:
    text = f"ID{tag:08X}"
    if vr == "SQ":
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.9.7.{tag}.1"
        item.PatientName = "Nested^Name"
        return Sequence([item])
    return {
        "DA": "20200315",
        "DT": "20200315101112",
        "TM": "101112",
        "UI": f"1.2.826.0.1.3680043.9.7.{tag}",
        "DS": "1.5",
        "IS": "7",
        "AS": "045Y",
        "US": 5,
        "SS": 5,
        "UL": 5,
        "FL": 1.5,
        "FD": 1.5,
        "OB": b"\x01\x02",
        "OW": b"\x01\x02" * 4,
        "UN": b"\x01\x02",
        "UR": "http://example.org/patient",
    }.get(vr, text)


def pixels() -> np.ndarray:
    return (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) % 4096


def golden_dicom(
    *, study: str = "1.2.826.0.1.3680043.9.7.1", sop: str = "1.2.826.0.1.3680043.9.7.2"
) -> bytes:
    """A CT image carrying every attribute the profile names, plus a private block."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag, _ in table_rows():
        if tag >> 16 == 0x0000:
            continue  # a command element: spliced into the bytes below
        vr = vr_of(tag)
        target = ds.file_meta if tag >> 16 == 0x0002 else ds
        target.add(DataElement(tag, vr, identifying_value(tag, vr)))
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.StudyInstanceUID = study
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "CT"
    ds.BurnedInAnnotation = "YES"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    block = ds.private_block(0x0011, "ACME Hospital", create=True)
    block.add_new(0x01, "LO", PATIENT_NAME)
    arr = pixels()
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return with_command_elements(out.getvalue())


def with_command_elements(data: bytes) -> bytes:
    """The file with the profile's command-group rows spliced in before the dataset (pydicom
    refuses to write them; a crafted file can still carry them)."""
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL after the preamble
    start = 144 + meta_length
    extra = b""
    for tag, _ in table_rows():
        if tag >> 16 == 0x0000:
            value = identifying_value(tag, "UI").encode()
            value += b"\x00" * (len(value) % 2)
            extra += (
                (tag >> 16).to_bytes(2, "little")
                + (tag & 0xFFFF).to_bytes(2, "little")
                + b"UI"
                + len(value).to_bytes(2, "little")
                + value
            )
    return data[:start] + extra + data[start:]


def read(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data))


def is_empty(elem: DataElement) -> bool:
    value = elem.value
    return value is None or len(value) == 0 if not isinstance(value, int | float) else False


def element(ds: Dataset, tag: int) -> DataElement | None:
    target = ds.file_meta if tag >> 16 == 0x0002 else ds
    return target.get(tag)


def test_the_table_is_the_profile_edition_named():
    rows = table_rows()
    assert len(rows) > 600  # the whole table, not a handful
    assert len(profile().exact) + len(profile().groups) == len(rows)
    assert PROFILE_EDITION.endswith("2026c")
    for tag, code in rows:
        assert profile().action(tag) == code, f"{tag:08X}"


@pytest.mark.parametrize("dates", ["remove", "shift"])
def test_golden_every_profile_attribute_gets_its_action(dates):
    original = golden_dicom()
    before = read(original)
    out = deidentify(original, policy=DeidPolicy(key=KEY, dates=dates), limits=LIMITS)
    after = read(out.data)
    issuer = f"ID{0x00100021:08X}"  # Issuer of Patient ID, a row of the table itself
    key = patient_key(PATIENT_ID, issuer, key=KEY)
    days = date_shift_days(f"{issuer}\x00{PATIENT_ID}", key=KEY)
    checked: dict[str, int] = {}
    for tag, code in table_rows():
        orig = element(before, tag)
        assert orig is not None, f"{tag:08X} missing from the golden input"
        assert orig.value, f"{tag:08X} is empty in the golden input"
        got = element(after, tag)
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {code} {orig.VR}"
        action = "X" if tag >> 16 == 0x0000 else resolve(code)  # command elements: removed
        dated = orig.VR in ("DA", "DT", "TM") and tag >> 16 != 0x0010
        if dates == "shift" and dated:
            assert got is not None, where
            if orig.VR == "TM":
                assert got.value == orig.value, where
            else:  # every date the profile names moves back by the patient's offset
                assert got.value == _shifted(str(orig.value), days), where
            checked["date option"] = checked.get("date option", 0) + 1
            continue
        if action == "X":
            assert got is None, where
        elif action == "Z":
            assert got is not None and is_empty(got), where
        elif action == "U":
            assert got is not None and str(got.value).startswith("2.25."), where
            assert got.value == new_uid(str(orig.value), key=KEY), where
        elif action == "D":
            assert got is not None, where
            if orig.VR == "SQ":
                assert len(got.value) == 0, where  # no dummy item is known to be clean
            else:
                assert not is_empty(got) and got.value != orig.value, where
                if tag == 0x00100020:
                    assert got.value == key
        else:  # X/Z/U*: the sequence is kept, the profile applied inside its items
            assert action == "K" and got is not None and len(got.value) == 1, where
            item = got.value[0]
            ref = item.ReferencedSOPInstanceUID
            assert ref == new_uid(str(orig.value[0].ReferencedSOPInstanceUID), key=KEY)
            assert item.ReferencedSOPClassUID == CTImageStorage
            assert item.PatientName == ""
        checked[code] = checked.get(code, 0) + 1
    assert set(checked) >= ({"X", "Z", "U"} | ({"D"} if dates == "remove" else set()))
    # no identifying text survives anywhere in the bytes, private block included
    for text in (PATIENT_NAME, PATIENT_ID, "Nested^Name", "ACME Hospital"):
        assert text.encode() not in out.data
    assert not any(e.tag.is_private for e in after.iterall())
    # pixel data byte for byte, and still decodable
    assert after.PixelData == before.PixelData
    values = decode(out.data, limits=LIMITS).values
    assert values is not None and np.array_equal(values, pixels().astype(np.float32))
    # what was done is recorded in the file, and the burned-in flag was read
    assert after.PatientIdentityRemoved == "YES"
    codes = {i.CodeValue for i in after.DeidentificationMethodCodeSequence}
    assert codes == ({"113100", "113107"} if dates == "shift" else {"113100"})
    assert out.burned_in_annotation and out.patient_key == key
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID


def _shifted(value: str, days: int) -> str:
    import datetime as dt

    day = dt.datetime.strptime(value[:8], "%Y%m%d").date() - dt.timedelta(days=days)
    return day.strftime("%Y%m%d") + value[8:]


def test_uids_and_dates_are_consistent_across_files_of_one_study():
    study = "1.2.826.0.1.3680043.9.7.100"
    a = golden_dicom(study=study, sop=study + ".1")
    b = golden_dicom(study=study, sop=study + ".2")
    policy = DeidPolicy(key=KEY)
    da, db = (read(deidentify(x, policy=policy, limits=LIMITS).data) for x in (a, b))
    assert da.StudyInstanceUID == db.StudyInstanceUID != study
    assert da.SeriesInstanceUID == db.SeriesInstanceUID
    assert da.SOPInstanceUID != db.SOPInstanceUID
    assert da.StudyDate == db.StudyDate != "20200315"
    assert da.AcquisitionDateTime == db.AcquisitionDateTime
    # another site (key) maps the same study elsewhere; dates of another patient move otherwise
    other = read(deidentify(a, policy=DeidPolicy(key=b"o" * 32), limits=LIMITS).data)
    assert other.StudyInstanceUID != da.StudyInstanceUID
    assert date_shift_days("\x00A", key=KEY) != date_shift_days("\x00B", key=KEY) or (
        date_shift_days("\x00C", key=KEY) != date_shift_days("\x00A", key=KEY)
    )


def test_dates_kept_by_option_and_originals_returned_when_kept():
    data = golden_dicom()
    out = deidentify(
        data, policy=DeidPolicy(key=KEY, dates="keep", keep_originals=True), limits=LIMITS
    )
    ds = read(out.data)
    assert ds.StudyDate == "20200315" and ds.StudyTime == "101112"
    assert ds.PatientBirthDate == ""  # the patient's own dates follow the Basic profile
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert out.original == data
    assert PATIENT_NAME.encode() not in out.data


def test_patient_key_is_keyed_and_uses_the_issuer():
    a = patient_key(PATIENT_ID, key=KEY)
    assert a == patient_key(f" {PATIENT_ID} ", key=KEY)
    assert a != patient_key(PATIENT_ID, "HOSP-B", key=KEY)
    assert a != patient_key(PATIENT_ID, key=b"x" * 32)
    assert patient_key("  ", key=KEY) is None
    assert a is not None and PATIENT_ID not in a and len(a) == 64


def test_disabled_policy_returns_the_upload_unchanged():
    data = golden_dicom()
    out = deidentify(data, policy=DeidPolicy(key=KEY, enabled=False), limits=LIMITS)
    assert out.data == data and out.burned_in_annotation and out.original is None


def test_truncated_or_garbled_dicom_fails_only_as_an_imaging_error():
    data = golden_dicom()
    for cut in (132, 200, 1000, 3000, len(data) // 2, len(data) - 7):
        for blob in (data[:cut], data[:cut] + b"\xff" * 64):
            try:
                out = deidentify(blob, policy=DeidPolicy(key=KEY), limits=LIMITS)
            except ImagingError as exc:
                assert exc.status_code in (413, 415, 422)
                assert PATIENT_NAME not in exc.detail and PATIENT_ID not in exc.detail
            else:
                assert PATIENT_NAME.encode() not in out.data


def test_simple_upload_loses_its_identifiers(imgdata):
    data = imgdata.dicom(np.zeros((8, 8), np.uint16))
    out = deidentify(data, policy=DeidPolicy(key=KEY), limits=LIMITS)
    for text in imgdata.patient_strings:
        assert text.encode() not in out.data
    assert b"St Elsewhere" not in out.data
    assert not out.burned_in_annotation


def test_no_identifier_reaches_a_log_line(caplog):
    ds = read(golden_dicom())
    tags = [t for t in ds.keys() if t.group == 0]  # noqa: SIM118 (iterating gives elements)
    for tag in tags:  # command elements: pydicom will not write them
        del ds[tag]
    ds.PatientName = "Doe^Johnathan\\Bad\x01Name"  # invalid PN: pydicom warns, quoting it
    ds.AccessionNumber = "ACC-" + "9" * 40  # too long for SH
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with caplog.at_level(logging.DEBUG):
        out = deidentify(buf.getvalue(), policy=DeidPolicy(key=KEY), limits=LIMITS)
        decode(out.data, limits=LIMITS)
    for record in caplog.records:
        message = record.getMessage()
        assert "Johnathan" not in message and "ACC-999" not in message, message
    assert b"Johnathan" not in out.data
