"""The format table: every sniffed kind has a decoder, and all decoders share one signature."""

from __future__ import annotations

import inspect
from typing import get_args

import numpy as np
import pytest

from clearscan.imaging import CorruptImage, ImageFormat, Limits, decode
from clearscan.imaging.formats import DECODERS, dicom, nifti, raster


def test_every_sniffed_kind_has_a_decoder():
    assert set(DECODERS) == set(get_args(ImageFormat))
    assert DECODERS["png"] is DECODERS["jpeg"] is raster.decode
    assert DECODERS["dicom"] is dicom.decode
    assert DECODERS["nifti"] is nifti.decode


@pytest.mark.parametrize("module", [raster, dicom, nifti])
def test_format_modules_share_one_signature(module):
    params = inspect.signature(module.decode).parameters
    assert list(params) == ["data", "limits", "frame"]
    assert params["data"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params["limits"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["frame"].kind is inspect.Parameter.KEYWORD_ONLY


def test_decode_dispatches_on_content_not_on_order(imgdata, monkeypatch):
    seen: list[str] = []

    def spy(kind):
        real = DECODERS[kind]

        def wrapped(data, *, limits, frame):
            seen.append(kind)
            return real(data, limits=limits, frame=frame)

        return wrapped

    import clearscan.imaging.formats as formats

    monkeypatch.setattr(formats, "DECODERS", {k: spy(k) for k in DECODERS})
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    decode(imgdata.png(gray))
    decode(imgdata.jpeg(gray))
    decode(imgdata.dicom(gray.astype(np.uint16)))
    decode(imgdata.nifti(np.zeros((4, 4, 3), np.int16)), limits=Limits())
    assert seen == ["png", "jpeg", "dicom", "nifti"]


def test_non_integer_frame_is_refused_before_decoding(imgdata):
    with pytest.raises(CorruptImage, match="frame must be an integer"):
        decode(imgdata.png(np.zeros((4, 4), np.uint8)), frame=True)
