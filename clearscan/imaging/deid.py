"""De-identification of DICOM uploads: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile, with ClearScan's options.

Where the profile comes from
    The table of Annex E (which attribute gets which action: X remove, Z empty, D dummy, U new
    UID, and the combined codes X/Z, X/D, Z/D, X/Z/D, X/Z/U*) is read from the
    ``dicom-anonymizer`` package (Kitware, BSD): it ships the table per edition of the standard,
    generated from the standard's own DocBook source (``dicomfields_2026c`` here, 650 attributes
    and three repeating groups), and tracks new editions. Its action engine is *not* used: it
    keeps a process-wide dictionary of random UIDs (unbounded in a server, inconsistent across
    processes), leaves attributes nested in sequences alone and prints to stdout. ``dicognito``
    (well kept) replaces a curated set of attribute families (names, IDs, addresses, dates,
    UIDs) rather than the profile's table, so attributes such as descriptions and comments
    would survive; ``deid`` is a recipe engine whose default recipe is "best effort", not the
    Annex E table. So the table comes from ``dicom-anonymizer`` and the actions are applied here
    with pydicom, at every nesting level.

How the action codes are carried out
    - X: the attribute is removed. Z: it is kept with an empty value (a sequence with no item).
      D: a dummy value of its VR ("ANONYMIZED", 0, 19000101...); the Patient ID's dummy is the
      pseudonymous patient key, so studies of one patient stay linked; a sequence whose action
      is D keeps no item (no dummy item is known to be free of identifiers). U: every value is
      replaced by ``2.25.<n>``, where n is an HMAC-SHA256 of the original UID under the site's
      pseudonym key (a UUID version 8): the same original UID gives the same new UID at one
      site, so the images of a study stay one study, and the original cannot be recovered.
    - Combined codes keep the attribute wherever an IOD might require it: X/Z -> Z; X/D, Z/D,
      X/Z/D -> D; X/Z/U* -> the sequence is kept and the profile applied inside its items
      (their instance UIDs are U attributes themselves).
    - Private attributes are removed (the profile's default; no "retain safe private" option),
      and so are command elements (group 0000, such as Requested SOP Instance UID, whose action
      is U): they have no place in a stored instance.
    - Dates (``DateMode``): ``shift`` (default) moves every DA and DT value the profile names by
      a per-patient number of days (365-4015 days back, from an HMAC of the patient identity)
      and keeps times of day: the Retain Longitudinal Temporal Information with Modified Dates
      Option. ``keep``: dates and times as they are (the Full Dates Option). ``remove``: the
      Basic profile as written. The patient's own dates and times (group 0010: birth date and
      time...) always follow the Basic profile.
    - The result records what was done: Patient Identity Removed = YES, De-identification
      Method (+ code sequence: 113100 and 113107 or 113106) and Longitudinal Temporal
      Information Modified.
    - Pixel data is never touched (nor re-encoded): images that carry burned-in text are
      recognised by Burned In Annotation = YES and reported (``burned_in_annotation``), for the
      caller to flag or refuse them; cleaning pixels is not attempted.

Only patient-free facts reach messages: errors name the problem, never a value.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from typing import Any, Literal

from clearscan.imaging.errors import CorruptImage, ImagingError, UnsupportedFormat
from clearscan.imaging.limits import Limits

__all__ = [
    "PROFILE_EDITION",
    "DateMode",
    "DeidPolicy",
    "Deidentified",
    "ProfileEntry",
    "deidentify",
    "deidentify_all",
    "is_dicom",
    "patient_key",
    "profile",
    "resolve",
]

DateMode = Literal["shift", "keep", "remove"]
PROFILE_EDITION = "dicomfields_2026c"
_CATEGORIES = {
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
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D"}
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_BINARY_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_PATIENT_GROUP = 0x0010
_PATIENT_ID = 0x00100020
_ISSUER = 0x00100021
_BURNED_IN = 0x00280301
_SHIFT_MIN_DAYS, _SHIFT_SPAN_DAYS = 365, 3651


@dataclass(frozen=True)
class ProfileEntry:
    """One row of the profile: a tag (or a repeating group: tag and mask) and its action."""

    tag: int
    mask: int
    action: str

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.tag & self.mask


@dataclass(frozen=True)
class Profile:
    exact: dict[int, str]
    groups: tuple[ProfileEntry, ...]

    def action(self, tag: int) -> str | None:
        found = self.exact.get(tag)
        if found is not None:
            return found
        return next((g.action for g in self.groups if g.matches(tag)), None)

    def entries(self) -> list[ProfileEntry]:
        return [ProfileEntry(t, 0xFFFFFFFF, a) for t, a in self.exact.items()] + list(self.groups)


@cache
def profile() -> Profile:
    """The Basic profile's table (attribute -> action code) of :data:`PROFILE_EDITION`."""
    import importlib

    module = importlib.import_module(
        f"dicomanonymizer.dicom_anonymization_databases.{PROFILE_EDITION}"
    )
    exact: dict[int, str] = {}
    groups: list[ProfileEntry] = []
    for category, code in _CATEGORIES.items():
        for row in getattr(module, category):
            if len(row) == 2:
                exact[(row[0] << 16) | row[1]] = code
            else:
                group, element, gmask, emask = row
                groups.append(ProfileEntry((group << 16) | element, (gmask << 16) | emask, code))
    return Profile(exact=exact, groups=tuple(groups))


def resolve(code: str) -> str:
    """The action carried out for a profile code: X, Z, D, U or K (keep, apply inside)."""
    return {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "K"}.get(code, code)


@dataclass(frozen=True)
class DeidPolicy:
    """What the site chose: the pseudonym key (HMAC key of UIDs, patient keys and date
    shifts), what happens to dates, whether originals are kept (by the caller), and whether
    images with burned-in annotation are refused for analysis."""

    key: bytes
    enabled: bool = True
    dates: DateMode = "shift"
    keep_originals: bool = False
    refuse_burned_in: bool = False


@dataclass(frozen=True)
class Deidentified:
    """The de-identified bytes of one upload and what was learnt on the way. ``original`` is
    the upload as received when the policy keeps originals (else None)."""

    data: bytes
    patient_key: str | None
    burned_in_annotation: bool
    original: bytes | None = None


def _hmac(key: bytes, domain: str, value: str) -> bytes:
    return hmac.new(key, f"{domain}\x00{value}".encode(), hashlib.sha256).digest()


def patient_key(patient_id: str, issuer: str | None = None, *, key: bytes) -> str | None:
    """The pseudonymous key of a patient: HMAC-SHA256 (hex) of the Patient ID and its issuer
    under the site's pseudonym key; None for an empty ID."""
    pid = patient_id.strip()
    if not pid:
        return None
    return _hmac(key, "patient", f"{(issuer or '').strip()}\x00{pid}").hex()


def new_uid(uid: str, *, key: bytes) -> str:
    """The replacement of `uid` at this site: ``2.25.`` + a keyed hash as a version 8 UUID."""
    raw = bytearray(_hmac(key, "uid", uid.strip("\x00 "))[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return f"2.25.{int.from_bytes(raw, 'big')}"


def date_shift_days(identity: str, *, key: bytes) -> int:
    """Days every date of this patient moves back (the same for all their images)."""
    n = int.from_bytes(_hmac(key, "dates", identity)[:8], "big")
    return _SHIFT_MIN_DAYS + n % _SHIFT_SPAN_DAYS


def shift_date(value: str, days: int) -> str:
    """A DA value (YYYYMMDD) moved `days` back; '' when it is not a full date."""
    text = value.strip()
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    if len(text) != 8:
        return ""
    try:
        return (day - dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return ""


def shift_datetime(value: str, days: int) -> str:
    """A DT value moved `days` back, keeping its time and offset; '' without a full date."""
    text = value.strip()
    if len(text) < 8:
        return ""
    shifted = shift_date(text[:8], days)
    return shifted + text[8:] if shifted else ""


class _Run:
    """One dataset's de-identification: the policy, the table, the patient's date shift."""

    def __init__(self, policy: DeidPolicy, patient: str | None, days: int) -> None:
        self.policy = policy
        self.table = profile()
        self.patient = patient
        self.days = days

    def apply(self, ds: Any) -> None:
        for tag in list(ds.keys()):
            elem = ds[tag]
            if elem.tag.is_private or elem.tag.group == 0x0000:
                # private attributes (the profile's default) and command elements, which have
                # no place in a stored instance (pydicom refuses to write them)
                del ds[tag]
                continue
            code = self.table.action(int(elem.tag))
            if code is None or resolve(code) == "K":
                if elem.VR == "SQ":
                    for item in elem.value or ():
                        self.apply(item)
                continue
            if self._date(ds, elem):
                continue
            self._act(ds, elem, resolve(code))

    def _date(self, ds: Any, elem: Any) -> bool:
        """Apply the date option to a DA/DT/TM attribute; True when it was handled."""
        mode = self.policy.dates
        if mode == "remove" or elem.VR not in ("DA", "DT", "TM"):
            return False
        if elem.tag.group == _PATIENT_GROUP:
            return False
        if mode == "keep" or elem.VR == "TM":
            return True
        shift = shift_date if elem.VR == "DA" else shift_datetime
        elem.value = _map_values(elem.value, lambda v: shift(v, self.days))
        return True

    def _act(self, ds: Any, elem: Any, action: str) -> None:
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            _empty(elem)
        elif action == "U":
            if elem.VR == "UI":
                elem.value = _map_values(elem.value, lambda v: new_uid(v, key=self.policy.key))
            else:
                _empty(elem)
        elif int(elem.tag) == _PATIENT_ID:
            elem.value = self.patient or ""
        else:
            _dummy(elem, self.policy.key)


def _map_values(value: Any, fn: Callable[[str], str]) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, str | bytes):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        return fn(text) if text.strip("\x00 ") else ""
    return [fn(str(v)) for v in value if str(v).strip("\x00 ")]


def _empty(elem: Any) -> None:
    if elem.VR == "SQ":
        elem.value = []
    elif elem.VR in _BYTES_VRS:
        elem.value = b""
    elif elem.VR in _BINARY_NUMBER_VRS:
        elem.value = None
    else:
        elem.value = ""


def _dummy(elem: Any, key: bytes) -> None:
    vr = elem.VR
    if vr == "SQ":
        elem.value = []
    elif vr in _TEXT_VRS:
        elem.value = _DUMMY_TEXT
    elif vr in _DUMMY:
        elem.value = _DUMMY[vr]
    elif vr in _NUMBER_STRING_VRS:
        elem.value = "0"
    elif vr in _BINARY_NUMBER_VRS:
        elem.value = 0
    elif vr in _BYTES_VRS:
        elem.value = b"\x00\x00"
    elif vr == "UI":
        elem.value = _map_values(elem.value, lambda v: new_uid(v, key=key))
    elif vr == "UR":
        elem.value = "http://anonymized.invalid"
    else:
        elem.value = _DUMMY_TEXT


def _text(ds: Any, tag: int) -> str:
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        value = str(value[0]) if len(value) else ""
    return value.strip("\x00 ")


def _method(policy: DeidPolicy) -> tuple[str, list[tuple[str, str]]]:
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if policy.dates == "shift":
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
        text = "PS3.15 E.1 Basic; dates shifted"
    elif policy.dates == "keep":
        codes.append(("113106", "Retain Longitudinal Temporal Information Full Dates Option"))
        text = "PS3.15 E.1 Basic; full dates"
    else:
        text = "PS3.15 E.1 Basic"
    return text, codes


def _mark(ds: Any, policy: DeidPolicy) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    text, codes = _method(policy)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = text
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = {
        "shift": "MODIFIED",
        "keep": "UNMODIFIED",
        "remove": "REMOVED",
    }[policy.dates]


def deidentify(data: bytes, *, policy: DeidPolicy, limits: Limits) -> Deidentified:
    """De-identify one DICOM file (``data``) under ``policy``; the pixel data element is
    written back byte for byte. CorruptImage / UnsupportedFormat (4xx) when it cannot be read
    or written; the messages name no attribute value."""
    _redact_pydicom_log()
    with warnings.catch_warnings():  # pydicom's validation warnings quote attribute values
        warnings.simplefilter("ignore", UserWarning)
        return _deidentify(data, policy=policy, limits=limits)


class _RedactQuoted(logging.Filter):
    """pydicom's warnings quote the values they found ("Invalid value for VR PN: '...'"): a
    patient's name must not reach a log line, so quoted text is masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "'" in message or '"' in message:
            record.msg, record.args = _QUOTED.sub("'…'", message), ()
        return True


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


@cache
def _redact_pydicom_log() -> None:
    logging.getLogger("pydicom").addFilter(_RedactQuoted())


def _deidentify(data: bytes, *, policy: DeidPolicy, limits: Limits) -> Deidentified:
    from pydicom import dcmwrite

    from clearscan.imaging.formats.dicom import read_dataset

    ds = read_dataset(data, limits)
    burned_in = _text(ds, _BURNED_IN).upper() == "YES"
    pid, issuer = _text(ds, _PATIENT_ID), _text(ds, _ISSUER)
    key = patient_key(pid, issuer, key=policy.key)
    if not policy.enabled:
        return Deidentified(data=data, patient_key=key, burned_in_annotation=burned_in)
    days = date_shift_days(f"{issuer}\x00{pid}", key=policy.key)
    run = _Run(policy, key, days)
    try:
        meta = getattr(ds, "file_meta", None)
        run.apply(ds)
        if meta is not None:
            run.apply(meta)
        _mark(ds, policy)
        _fix_meta(ds)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        # the type only: a parser's message may quote an attribute's value
        raise CorruptImage(
            f"DICOM header could not be de-identified ({type(exc).__name__})"
        ) from exc
    out = BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:
        raise UnsupportedFormat(
            f"the de-identified DICOM could not be written: {type(exc).__name__}"
        ) from exc
    return Deidentified(
        data=out.getvalue(),
        patient_key=key,
        burned_in_annotation=burned_in,
        original=data if policy.keep_originals else None,
    )


def _fix_meta(ds: Any) -> None:
    """File meta consistent with the new dataset (pydicom needs it to write a Part 10 file)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
    )

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if not meta.get("TransferSyntaxUID"):
        implicit, _ = getattr(ds, "original_encoding", (None, None))
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
    meta.MediaStorageSOPClassUID = sop_class or SecondaryCaptureImageStorage
    if ds.get("SOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    elif not meta.get("MediaStorageSOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = "2.25.0"


def is_dicom(data: bytes) -> bool:
    """Whether the content is DICOM (what the decoder would take it for)."""
    from clearscan.imaging.sniff import sniff

    try:
        return sniff(data) == "dicom"
    except ImagingError:
        return False  # the decoder refuses it with its own message


def deidentify_all(
    uploads: Iterable[bytes], *, policy: DeidPolicy, limits: Limits
) -> list[Deidentified | None]:
    """:func:`deidentify` each DICOM upload (None for the other formats, which carry no
    header to clean)."""
    return [
        deidentify(data, policy=policy, limits=limits) if is_dicom(data) else None
        for data in uploads
    ]
