"""Property-based fuzzing of :func:`clearscan.imaging.decode` for PNG, JPEG, DICOM and NIfTI.

Each test starts from small valid images (built in memory) and applies structured mutations:
byte flips, truncation, insertion and deletion, extreme values, and overrides of the header
fields the decoders size their buffers from (PNG IHDR, JPEG SOF, DICOM image-pixel elements and
transfer syntax, NIfTI dim/datatype/vox_offset/scaling/affine), plus random bytes behind each
format's magic. The property: ``decode`` returns a well-formed image within the limits, or raises
an :class:`~clearscan.imaging.ImagingError` with a 4xx status; anything else is a failure.

Runs are reproducible and bounded: ``derandomize=True``, no example database, a deadline per
example and a fixed number of examples per test. Small limits keep every decodable header cheap,
the address space is capped while the module runs (a decoder asking for gigabytes gets a
``MemoryError``, which ``decode`` would report as a 413 whose cause the property rejects), and a
watchdog dumps the stacks and ends the run if one test hangs.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gzip
import io
import re
import resource
import struct
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from clearscan.imaging import DecodedImage, ImagingError, Limits, decode
from clearscan.imaging.sniff import sniff
from tests.imaging.conftest import jpeg_bytes, make_dicom, make_nifti, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore")  # decoders warn about malformed headers

# Small caps: any header that passes them decodes in well under a millisecond of pixel work.
LIMITS = Limits(max_pixels=1 << 18, max_dimension=2048, max_volume_voxels=1 << 22)
ADDRESS_SPACE_HEADROOM = 2 << 30  # bytes above what the process maps when the module starts
HANG_SECONDS = 300  # per test; far above the whole module's runtime

# Examples per test. The compressed-DICOM seeds cost more per example (a frame every decoding
# plugin refuses is handed to GDCM in a child process), so they get fewer.
EXAMPLES = 1000
EXAMPLES_COMPRESSED = 300

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_COMPRESSED = settings(FUZZ, max_examples=EXAMPLES_COMPRESSED)

_FORMAT_OF_SNIFF = {"png": "png", "jpeg": "jpeg", "dicom": "dicom", "nifti": "nifti"}


# --------------------------------------------------------------------------- guards


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@pytest.fixture(autouse=True, scope="module")
def _memory_cap() -> Iterator[None]:
    """Cap the address space (soft limit, restored afterwards) while the module runs."""
    mapped = _mapped_bytes() if sys.platform.startswith("linux") else None
    if mapped is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped + ADDRESS_SPACE_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------- the property


def check_decode(data: bytes, frame: int | None = None) -> DecodedImage | None:
    """Decode ``data``: a well-formed image within the limits, or an ImagingError with a 4xx."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = decode(data, limits=LIMITS, frame=frame)
        except ImagingError as exc:
            assert 400 <= exc.status_code < 500, exc.status_code
            assert isinstance(exc.detail, str) and exc.detail
            assert not isinstance(exc.__cause__, MemoryError), "decoder ran out of memory"
            _event(f"rejected {exc.status_code}: {_reason(exc)}")
            return None
    check_image(img, data)
    _event(f"decoded {img.format}")
    if frame is not None:
        assert img.frame_index == frame
    return img


def _event(label: str) -> None:
    if currently_in_test_context():
        event(label)


def _reason(exc: ImagingError) -> str:
    """The message up to its first digit or colon: few distinct labels for the statistics."""
    return re.split(r"[0-9:(]", exc.detail, maxsplit=1)[0].strip()[:60]


def check_image(img: DecodedImage, data: bytes) -> None:
    assert isinstance(img, DecodedImage)
    assert img.format == _FORMAT_OF_SNIFF[sniff(data)]
    assert img.channels in (1, 3)
    assert 1 <= img.width <= LIMITS.max_dimension
    assert 1 <= img.height <= LIMITS.max_dimension
    assert img.width * img.height <= LIMITS.max_pixels
    shape = (img.height, img.width) if img.channels == 1 else (img.height, img.width, 3)
    px = img.pixels
    assert isinstance(px, np.ndarray) and px.dtype == np.float32
    assert px.shape == shape
    assert np.isfinite(px).all()
    assert px.min() >= 0.0 and px.max() <= 1.0
    if img.values is not None:
        assert img.values.shape == (img.height, img.width)
        assert np.isfinite(img.values).all()
    assert img.frames >= 1 and 0 <= img.frame_index < img.frames


# --------------------------------------------------------------------------- seeds


_RNG_SEED = 20240611


@cache
def seeds() -> dict[str, bytes]:
    """Small valid images of every supported kind, built once."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    rng = np.random.default_rng(_RNG_SEED)
    gray8 = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    ct = rng.integers(0, 4096, (16, 16), dtype=np.uint16)
    frames = rng.integers(-500, 500, (3, 6, 5), dtype=np.int16)
    vol = rng.integers(-100, 100, (6, 5, 4), dtype=np.int16)
    vol_f = rng.normal(size=(5, 4, 3)).astype(np.float32)
    vol_f[0, 0, 0] = np.nan
    oblique = np.array(
        [[0.0, 0.0, -2.0, 10.0], [1.5, 0.3, 0.0, -4.0], [0.0, 1.0, 0.1, 2.0], [0, 0, 0, 1]]
    )
    out = {
        "png-gray8": png_bytes(gray8),
        "png-gray16": png_bytes(gray16),
        "png-rgb": png_bytes(rgb),
        "png-palette": png_bytes(rgb_to_palette(rgb)),
        "jpeg-gray": jpeg_bytes(gray8),
        "jpeg-rgb": jpeg_bytes(np.ascontiguousarray(np.tile(rgb, (2, 2, 1)))),
        "dicom-ct": make_dicom(ct, bits_stored=12, rescale=(1.0, -1024.0), window=(40.0, 400.0)),
        "dicom-rgb": make_dicom(rgb, photometric="RGB"),
        "dicom-frames": make_dicom(frames, frames=3),
        "dicom-implicit-bare": make_dicom(
            gray8, transfer_syntax="1.2.840.10008.1.2", preamble=False
        ),
        "dicom-rle": make_dicom(ct, bits_stored=12, compress=RLELossless),
        "dicom-jpeg": _dicom_jpeg_baseline(gray8),
        "nifti1": make_nifti(vol),
        "nifti1-float": make_nifti(vol_f, oblique, slope=2.0, inter=-1.0),
        "nifti2": make_nifti(vol, version=2),
    }
    with contextlib.suppress(Exception):  # no JPEG 2000 encoder installed
        out["dicom-j2k"] = make_dicom(
            np.tile(ct, (4, 4)), bits_stored=12, compress=JPEG2000Lossless
        )
    return out


def rgb_to_palette(rgb: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)


def _dicom_jpeg_baseline(gray: np.ndarray) -> bytes:
    from pydicom.encaps import encapsulate

    return make_dicom(
        gray,
        transfer_syntax="1.2.840.10008.1.2.4.50",
        pixel_data=encapsulate([jpeg_bytes(gray)]),
    )


def seed_names(prefix: str) -> list[str]:
    return sorted(name for name in seeds() if name.startswith(prefix))


# --------------------------------------------------------------------------- mutations

_EXTREMES = (
    b"\x00",
    b"\xff",
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x80\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x00\x00\x80\x7f",  # float32 +inf (little endian)
    b"\x00\x00\xc0\x7f",  # float32 NaN (little endian)
)


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes, *, start: int = 0, hot: int = 1024) -> bytes:
    """1-4 structured byte-level edits at or after ``start`` (past the magic, which is fuzzed
    on its own); positions favour the first ``hot`` bytes (the header)."""
    buf = bytearray(data)
    for op in draw(
        st.lists(
            st.sampled_from(["flip", "set", "truncate", "insert", "delete", "extreme"]),
            min_size=1,
            max_size=4,
        )
    ):
        n = len(buf)
        if n <= start:
            break
        pos = draw(
            st.one_of(
                st.integers(start, max(min(n, hot), start + 1) - 1), st.integers(start, n - 1)
            )
        )
        if op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 64))]
        else:
            value = draw(st.sampled_from(_EXTREMES))
            buf[pos : pos + len(value)] = value
    return bytes(buf)


def _seeded(prefix: str, mutate: Callable[[bytes], st.SearchStrategy[bytes]]) -> Any:
    return st.sampled_from(seed_names(prefix)).flatmap(lambda name: mutate(seeds()[name]))


# --------------------------------------------------------------------------- PNG / JPEG

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIDES = st.one_of(
    st.sampled_from([0, 1, 2, 3, 255, 256, 2047, 2048, 2049, 65535, 2**31 - 1, 2**31, 2**32 - 1]),
    st.integers(1, 64),
)


_PNG_MODES = [(d, 0) for d in (1, 2, 4, 8, 16)] + [(d, c) for c in (2, 4, 6) for d in (8, 16)]
_PNG_MODES += [(d, 3) for d in (1, 2, 4, 8)]
_PNG_ODD_MODES = st.tuples(
    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32, 255]), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 255])
)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_chunk(kind: bytes, payload: bytes, crc: int | None = None) -> bytes:
    if crc is None:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@st.composite
def png_header_overrides(draw: st.DrawFn, data: bytes) -> bytes:
    """Rewrite IHDR fields, the image data and the palette; CRCs fixed, kept or broken."""
    chunks = png_chunks(data)
    width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if draw(st.integers(0, 3)) == 0:
        width = draw(_SIDES)
    if draw(st.integers(0, 3)) == 0:
        height = draw(_SIDES)
    if draw(st.integers(0, 2)) == 0:  # mostly a valid bit depth / colour type pair
        depth, color = draw(st.one_of(st.sampled_from(_PNG_MODES), _PNG_ODD_MODES))
    if draw(st.integers(0, 7)) == 0:
        comp, filt = draw(st.sampled_from([(1, 0), (0, 1), (255, 255)]))
    if draw(st.integers(0, 3)) == 0:
        interlace = draw(st.sampled_from([0, 1, 2]))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, comp, filt, interlace)
    body = [(b"IHDR", ihdr), *chunks[1:]]
    if draw(st.booleans()):  # fresh image data: random filtered scanlines, validly deflated
        raw = draw(st.binary(max_size=4096))
        body = [c for c in body if c[0] != b"IDAT"]
        body.insert(-1, (b"IDAT", zlib.compress(raw)))
    if draw(st.integers(0, 3)) == 0:  # a palette of any size (or a second one)
        body.insert(1, (b"PLTE", draw(st.binary(max_size=800))))
    if draw(st.integers(0, 3)) == 0:  # transparency, gamma or a text chunk with any payload
        kind = draw(st.sampled_from([b"tRNS", b"gAMA", b"sBIT", b"zTXt", b"iCCP", b"acTL"]))
        body.insert(1, (kind, draw(st.binary(max_size=64))))
    crc_mode = draw(st.sampled_from(["fix", "fix", "fix", "fix", "break-ihdr", "break-random"]))
    out = bytearray(_PNG_SIGNATURE)
    for i, (kind, payload) in enumerate(body):
        crc = None
        if (crc_mode == "break-ihdr" and i == 0) or (
            crc_mode == "break-random" and draw(st.booleans())
        ):
            crc = draw(st.integers(0, 2**32 - 1))
        out += png_chunk(kind, payload, crc)
    return bytes(out)


@st.composite
def jpeg_sof_overrides(draw: st.DrawFn, data: bytes) -> bytes:
    """Rewrite the SOF segment: precision, height, width, component count (and the marker)."""
    buf = bytearray(data)
    pos = next(buf.find(m) for m in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1") if buf.find(m) >= 0)
    if draw(st.booleans()):
        buf[pos + 1] = draw(st.sampled_from([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC9, 0xCB, 0xF7]))
    buf[pos + 4] = draw(st.sampled_from([buf[pos + 4], 0, 2, 8, 12, 16, 255]))
    height = draw(st.one_of(st.just(struct.unpack_from(">H", buf, pos + 5)[0]), _SIDES))
    width = draw(st.one_of(st.just(struct.unpack_from(">H", buf, pos + 7)[0]), _SIDES))
    struct.pack_into(">HH", buf, pos + 5, height & 0xFFFF, width & 0xFFFF)
    buf[pos + 9] = draw(st.sampled_from([buf[pos + 9], 0, 1, 2, 3, 4, 255]))
    mutated = bytes(buf)
    if draw(st.booleans()):
        mutated = draw(byte_mutations(mutated, start=3, hot=256))
    return mutated


# --------------------------------------------------------------------------- DICOM

_US = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 24, 32, 64, 255, 256, 4096, 32768, 65535]),
    st.integers(0, 65535),
).map(lambda v: struct.pack("<H", v))
_US_RAW = st.one_of(_US, _US, st.binary(max_size=6))  # wrong value lengths too
_IS = st.sampled_from(
    ["0", "1", "2", "3", "4", "-1", "1000000", "2147483648", "1e9", "1.5", "NaN", "abc", "", "2\\3"]
)
_DS = st.sampled_from(
    ["1", "0", "-1", "0.5", "1e308", "-1e308", "1e-308", "NaN", "inf", "-inf", "abc", "", "1\\2"]
)
_CS_PHOTOMETRIC = st.sampled_from(
    [
        "MONOCHROME1",
        "MONOCHROME2",
        "RGB",
        "PALETTE COLOR",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_RCT",
        "YBR_ICT",
        "",
        "xx",
    ]
)
_CS_VOI = st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID", "", "BOGUS"])


def _text(values: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return values.map(lambda s: (s + " " * (len(s) % 2)).encode())


# (tag, VR, raw value strategy) of every element the decoder reads to size and map pixels
_DICOM_FIELDS: tuple[tuple[int, str, st.SearchStrategy[bytes]], ...] = (
    (0x00280002, "US", _US_RAW),  # SamplesPerPixel
    (0x00280004, "CS", _text(_CS_PHOTOMETRIC)),  # PhotometricInterpretation
    (0x00280006, "US", _US_RAW),  # PlanarConfiguration
    (0x00280008, "IS", _text(_IS)),  # NumberOfFrames
    (0x00280010, "US", _US_RAW),  # Rows
    (0x00280011, "US", _US_RAW),  # Columns
    (0x00280100, "US", _US_RAW),  # BitsAllocated
    (0x00280101, "US", _US_RAW),  # BitsStored
    (0x00280102, "US", _US_RAW),  # HighBit
    (0x00280103, "US", _US_RAW),  # PixelRepresentation
    (0x00281050, "DS", _text(_DS)),  # WindowCenter
    (0x00281051, "DS", _text(_DS)),  # WindowWidth
    (0x00281052, "DS", _text(_DS)),  # RescaleIntercept
    (0x00281053, "DS", _text(_DS)),  # RescaleSlope
    (0x00281056, "CS", _text(_CS_VOI)),  # VOILUTFunction
)
_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 (no decoder)
    "1.2.3.4",
    "",
    "not a uid",
)


def set_transfer_syntax(data: bytes, uid: str) -> bytes:
    """Replace the file meta TransferSyntaxUID (and fix the group length); body untouched."""
    marker = b"\x02\x00\x10\x00UI"
    pos = data.find(marker, 132)
    if data[128:132] != b"DICM" or pos < 0:
        return data
    (length,) = struct.unpack_from("<H", data, pos + 6)
    value = uid.encode() + b"\x00" * (len(uid) % 2)
    element = marker + struct.pack("<H", len(value)) + value
    out = bytearray(data[:pos] + element + data[pos + 8 + length :])
    if out[132:138] == b"\x02\x00\x00\x00UL":
        (group_length,) = struct.unpack_from("<I", out, 140)
        struct.pack_into("<I", out, 140, group_length + len(value) - length)
    return bytes(out)


@st.composite
def dicom_header_overrides(draw: st.DrawFn, data: bytes) -> bytes:
    """Override image-pixel elements (raw bytes: any length, any text), resize or drop the pixel
    data, then optionally swap the transfer syntax and add byte-level edits."""
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    implicit = bool(ds.original_encoding[0])
    fields = draw(st.lists(st.sampled_from(_DICOM_FIELDS), min_size=1, max_size=4))
    for tag, vr, values in fields:
        if draw(st.integers(0, 5)) == 0:
            if tag in ds:
                del ds[tag]
            continue
        value = draw(values)
        ds[tag] = RawDataElement(
            Tag(tag), None if implicit else vr, len(value), value, 0, implicit, True
        )
    pixel_op = draw(st.sampled_from(["keep", "keep", "truncate", "extend", "drop"]))
    if "PixelData" in ds and pixel_op != "keep":
        if pixel_op == "drop":
            del ds.PixelData
        else:
            elem = ds["PixelData"]
            value = elem.value
            if pixel_op == "truncate":
                # encapsulated data must start with an item tag for the writer to accept it
                keep = draw(st.integers(4 if elem.is_undefined_length else 0, len(value)))
                value = value[:keep]
            else:
                value += draw(st.binary(min_size=1, max_size=256))
            # written as is: encapsulated data keeps its undefined length, odd lengths stay odd
            length = 0xFFFFFFFF if elem.is_undefined_length else len(value)
            pixel_vr: str | None = None if implicit else elem.VR
            ds[0x7FE00010] = RawDataElement(
                Tag(0x7FE00010), pixel_vr, length, value, 0, implicit, True
            )
    out = io.BytesIO()
    preamble = data[128:132] == b"DICM"
    ds.save_as(out, enforce_file_format=preamble, implicit_vr=implicit if not preamble else None)
    mutated = out.getvalue()
    if preamble and draw(st.integers(0, 3)) == 0:
        mutated = set_transfer_syntax(mutated, draw(st.sampled_from(_TRANSFER_SYNTAXES)))
    if draw(st.integers(0, 3)) == 0:
        mutated = draw(byte_mutations(mutated))
    return mutated


# --------------------------------------------------------------------------- NIfTI

_DIM = st.one_of(st.sampled_from([-1, 0, 1, 2, 3, 7, 2048, 2049, 32767]), st.integers(1, 8))
_DATATYPES = st.one_of(
    st.sampled_from(
        [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304]
    ),
    st.integers(-32768, 32767),
)
_FLOATS = st.sampled_from(
    [0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, -3.4e38, float("nan"), float("inf"), float("-inf")]
)
_VOX_OFFSETS = st.sampled_from(
    [
        0.0,
        344.0,
        348.0,
        351.5,
        352.0,
        356.0,
        540.0,
        544.0,
        4096.0,
        1e9,
        2.0**26,
        2.0**26 + 4,
        -352.0,
        float("nan"),
        float("inf"),
    ]
)
_XFORM_CODES = st.sampled_from([0, 1, 2, 3, 4, 5, -1])

# (field, NIfTI-1 (offset, format), NIfTI-2 (offset, format))
_NIFTI_FIELDS: dict[str, tuple[tuple[int, str], tuple[int, str]]] = {
    "dim": ((40, "8h"), (16, "8q")),
    "datatype": ((70, "h"), (12, "h")),
    "bitpix": ((72, "h"), (14, "h")),
    "pixdim": ((76, "8f"), (104, "8d")),
    "vox_offset": ((108, "f"), (168, "q")),
    "scl": ((112, "2f"), (176, "2d")),
    "xform_codes": ((252, "2h"), (344, "2i")),
    "quatern": ((256, "6f"), (352, "6d")),
    "srow": ((280, "12f"), (400, "12d")),
}


def _nifti_values(draw: st.DrawFn, field: str, count: int) -> list[Any]:
    if field == "dim":
        return [
            draw(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 7, 8])),
            *draw(st.lists(_DIM, min_size=7, max_size=7)),
        ]
    if field in ("datatype", "bitpix"):
        return [draw(_DATATYPES)]
    if field == "vox_offset":
        return [draw(_VOX_OFFSETS)]
    if field == "xform_codes":
        return [draw(_XFORM_CODES), draw(_XFORM_CODES)]
    return draw(st.lists(_FLOATS, min_size=count, max_size=count))


@st.composite
def nifti_header_overrides(draw: st.DrawFn, data: bytes) -> bytes:
    """Override header fields (dims, datatype, vox_offset, scaling, affine), resize the voxel
    data, optionally gzip the result, then optionally add byte-level edits."""
    version = 2 if data[4:8] == b"n+2\x00" else 1
    buf = bytearray(data)
    for field in draw(st.lists(st.sampled_from(sorted(_NIFTI_FIELDS)), min_size=1, max_size=3)):
        offset, fmt = _NIFTI_FIELDS[field][version - 1]
        count = int(fmt[:-1] or 1)
        values = _nifti_values(draw, field, count)
        try:
            if fmt[-1] in "hiq":
                values = [int(v) for v in values]
            struct.pack_into("<" + fmt, buf, offset, *values)
        except (struct.error, OverflowError, ValueError):
            continue  # a value the field cannot hold (e.g. a float32 overflow)
    tail = draw(st.sampled_from(["keep", "keep", "truncate", "extend"]))
    if tail == "truncate":
        del buf[draw(st.integers(0, len(buf))) :]
    elif tail == "extend":
        buf += draw(st.binary(min_size=1, max_size=512))
    mutated = bytes(buf)
    if draw(st.booleans()):
        mutated = gzip.compress(mutated, compresslevel=1, mtime=0)
    if draw(st.integers(0, 3)) == 0:
        mutated = draw(byte_mutations(mutated, start=4, hot=600))
    return mutated


# --------------------------------------------------------------------------- raw bytes with magic


@st.composite
def magic_prefixed(draw: st.DrawFn) -> bytes:
    """Random bytes behind each format's signature (and a header-shaped NIfTI frame)."""
    kind = draw(st.sampled_from(["png", "jpeg", "dicom", "dicom-bare", "nifti1", "nifti2", "gzip"]))
    body = draw(st.binary(max_size=2048))
    if kind == "png":
        return _PNG_SIGNATURE + body
    if kind == "jpeg":
        return b"\xff\xd8\xff" + body
    if kind == "dicom":
        return bytes(128) + b"DICM" + body
    if kind == "dicom-bare":
        return b"\x08\x00\x05\x00CS" + body
    if kind == "gzip":
        return b"\x1f\x8b" + body
    size, magic_at, magic = (348, 344, b"n+1\x00") if kind == "nifti1" else (540, 4, b"n+2\x00")
    if kind == "nifti2":
        magic += b"\r\n\x1a\n"
    head = bytearray(draw(st.binary(min_size=size + 4, max_size=size + 4)))
    struct.pack_into("<i", head, 0, size)
    head[magic_at : magic_at + len(magic)] = magic
    raw = bytes(head) + body
    return gzip.compress(raw, compresslevel=1, mtime=0) if draw(st.booleans()) else raw


# --------------------------------------------------------------------------- tests


def test_seeds_decode() -> None:
    """Every seed is a valid image: the mutations start from data the decoders accept."""
    for name, data in seeds().items():
        assert check_decode(data) is not None, name
    gz = gzip.compress(seeds()["nifti1"], mtime=0)
    assert check_decode(gz) is not None


@FUZZ
@given(data=_seeded("png", lambda d: byte_mutations(d, start=8)))
def test_png_byte_mutations(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(data=_seeded("png", png_header_overrides))
def test_png_header_overrides(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(data=_seeded("jpeg", lambda d: st.one_of(byte_mutations(d, start=3), jpeg_sof_overrides(d))))
def test_jpeg_mutations(data: bytes) -> None:
    check_decode(data)


_FRAMES = st.one_of(st.none(), st.sampled_from([0, 1, 2, -1, 2**31]))
_NATIVE_DICOM = ("dicom-ct", "dicom-rgb", "dicom-frames", "dicom-implicit-bare")


@FUZZ
@given(
    data=st.sampled_from(_NATIVE_DICOM).flatmap(
        lambda name: st.one_of(
            byte_mutations(seeds()[name], start=132 if seeds()[name][128:132] == b"DICM" else 8),
            dicom_header_overrides(seeds()[name]),
        )
    ),
    frame=_FRAMES,
)
def test_dicom_native_mutations(data: bytes, frame: int | None) -> None:
    check_decode(data, frame)


@FUZZ_COMPRESSED
@given(
    data=st.sampled_from(["dicom-rle", "dicom-jpeg", "dicom-j2k"]).flatmap(
        lambda name: (
            st.one_of(
                byte_mutations(
                    seeds()[name], start=132 if seeds()[name][128:132] == b"DICM" else 8
                ),
                dicom_header_overrides(seeds()[name]),
            )
            if name in seeds()
            else st.just(seeds()["dicom-rle"])
        )
    ),
    frame=_FRAMES,
)
def test_dicom_compressed_mutations(data: bytes, frame: int | None) -> None:
    check_decode(data, frame)


@FUZZ
@given(
    data=st.sampled_from(["nifti1", "nifti1-float", "nifti2"]).flatmap(
        lambda name: st.one_of(
            byte_mutations(seeds()[name], start=4, hot=600),
            byte_mutations(
                gzip.compress(seeds()[name], compresslevel=1, mtime=0), start=10, hot=64
            ),
            nifti_header_overrides(seeds()[name]),
        )
    ),
    frame=_FRAMES,
)
def test_nifti_mutations(data: bytes, frame: int | None) -> None:
    check_decode(data, frame)


@FUZZ
@given(data=magic_prefixed())
def test_random_bytes_behind_magic(data: bytes) -> None:
    check_decode(data)
