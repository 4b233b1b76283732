"""GDCM as the last-resort DICOM decoder, isolated in a child process."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

from clearscan.imaging import CorruptImage, decode
from clearscan.imaging.formats import dicom_gdcm
from clearscan.imaging.formats.dicom import PLUGIN_ORDER

gdcm = pytest.importorskip("gdcm", reason="python-gdcm is a dependency of clearscan")


def _local(name: str) -> Path:
    path = get_testdata_file(name)  # these ship with pydicom: no download
    assert path is not None, f"{name} should ship with pydicom"
    return Path(path)


def _quiet_decode(data: bytes, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode(data, **kwargs)


def _sof_offset(data: bytes) -> int:
    soi = data.index(b"\xff\xd8\xff")
    return data.index(b"\xff\xc1", soi)  # JPEG Extended: SOF1


def test_jpeg_lossy_is_refused_by_libjpeg():
    """The precondition of the fallback: pylibjpeg alone cannot read this valid file."""
    ds = pydicom.dcmread(_local("JPEG-lossy.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEGExtended12Bit and ds.BitsStored == 12
    with pytest.raises(Exception, match="-1038"):
        pixel_array(ds, decoding_plugin="pylibjpeg")


def test_jpeg_lossy_decodes_through_gdcm_and_matches_its_repaired_twin():
    img = _quiet_decode(_local("JPEG-lossy.dcm").read_bytes())
    assert (img.format, img.width, img.height, img.bit_depth) == ("dicom", 256, 1024, 12)
    assert img.transfer_syntax == JPEGExtended12Bit
    assert img.values is not None

    # pydicom's README: JPGExtended.dcm is the "fixed version of JPEG-lossy.dcm" (same image,
    # repaired SOS parameters), which libjpeg reads. Lossy IDCTs may differ by one grey level.
    twin = pydicom.dcmread(_local("JPGExtended.dcm")).pixel_array.astype(np.int32)
    diff = np.abs(img.values.astype(np.int32) - twin)
    assert twin.max() > 200  # a real image, not a blank one
    assert diff.max() <= 1
    assert diff.mean() < 0.05

    # And exactly what GDCM itself reads from the whole file (a trusted file, in-process).
    reader = gdcm.ImageReader()
    reader.SetFileName(str(_local("JPEG-lossy.dcm")))
    assert reader.Read()
    raw = reader.GetImage().GetBuffer().encode("utf-8", "surrogateescape")
    expected = np.frombuffer(raw, "<u2").reshape(1024, 256)
    np.testing.assert_array_equal(img.values, expected)


def test_gdcm_replaces_pydicoms_in_process_plugin_and_comes_last():
    _quiet_decode(_local("CT_small.dcm").read_bytes())  # any DICOM decode registers the plugin
    for uid in (JPEGBaseline8Bit, JPEGExtended12Bit):
        plugins = get_decoder(uid).available_plugins
        assert dicom_gdcm.PLUGIN in plugins
        assert "gdcm" not in plugins  # GDCM never decodes untrusted data in this process
    assert PLUGIN_ORDER[-1] == dicom_gdcm.PLUGIN


def test_files_libjpeg_reads_are_not_decoded_by_gdcm():
    """GDCM and libjpeg disagree on this colour JPEG: the result must stay libjpeg's."""
    path = _local("SC_rgb_jpeg.dcm")
    ds = pydicom.dcmread(path)
    dicom_gdcm.register()
    by_libjpeg = pixel_array(ds, decoding_plugin="pylibjpeg")
    by_gdcm = pixel_array(ds, decoding_plugin=dicom_gdcm.PLUGIN)
    assert not np.array_equal(by_libjpeg, by_gdcm)
    img = _quiet_decode(path.read_bytes())
    np.testing.assert_allclose(img.pixels, by_libjpeg.astype(np.float32) / 255.0)


def _child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(f"import os, signal, sys, time\n{body}\n")
    monkeypatch.setattr(dicom_gdcm, "CHILD", script)


def test_a_crashing_gdcm_is_one_more_refusal(tmp_path, monkeypatch):
    _child(tmp_path, monkeypatch, "os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(CorruptImage) as info:
        _quiet_decode(_local("JPEG-lossy.dcm").read_bytes())
    assert "pylibjpeg: libjpeg error code '-1038'" in info.value.detail
    assert f"{dicom_gdcm.PLUGIN}: GDCM crashed (SIGSEGV)" in info.value.detail
    assert info.value.status_code == 422


def test_a_hanging_gdcm_is_stopped(tmp_path, monkeypatch):
    _child(tmp_path, monkeypatch, "time.sleep(30)")
    monkeypatch.setattr(dicom_gdcm, "TIMEOUT_SECONDS", 0.5)
    with pytest.raises(CorruptImage, match=r"GDCM took longer than 0\.5 s"):
        _quiet_decode(_local("JPEG-lossy.dcm").read_bytes())


def _runner_for(ds: pydicom.Dataset) -> SimpleNamespace:
    return SimpleNamespace(
        transfer_syntax=ds.file_meta.TransferSyntaxUID,
        rows=ds.Rows,
        columns=ds.Columns,
        samples_per_pixel=ds.SamplesPerPixel,
        bits_allocated=ds.BitsAllocated,
        bits_stored=ds.BitsStored,
        pixel_representation=ds.PixelRepresentation,
        photometric_interpretation=ds.PhotometricInterpretation,
        get_option=lambda name, default=None: default,
        set_option=lambda name, value: None,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="the crash was observed with Linux wheels")
def test_real_gdcm_crash_is_contained():
    """A 12-bit frame whose SOF claims 90-bit samples makes GDCM 3.2 segfault. decode() refuses
    such a frame before any decoder sees it; handed to the plugin directly, the crash stays in
    the child and comes back as an error."""
    data = bytearray(_local("JPEG-lossy.dcm").read_bytes())
    data[_sof_offset(data) + 4] = 90
    with pytest.raises(CorruptImage, match="claims 90-bit samples"):
        _quiet_decode(bytes(data))

    ds = pydicom.dcmread(_local("JPEG-lossy.dcm"))
    frame = bytearray(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    frame[frame.index(b"\xff\xc1") + 4] = 90
    with pytest.raises(ValueError, match="GDCM"):
        dicom_gdcm.decode_frame(bytes(frame), _runner_for(ds))


def test_child_output_of_the_wrong_size_is_refused(tmp_path, monkeypatch):
    _child(tmp_path, monkeypatch, "sys.stdin.buffer.read(); sys.stdout.buffer.write(b'x' * 10)")
    ds = pydicom.dcmread(_local("JPEG-lossy.dcm"))
    with pytest.raises(ValueError, match="returned 10 bytes"):
        dicom_gdcm.decode_frame(b"\xff\xd8", _runner_for(ds))


@pytest.mark.parametrize(
    ("bits_allocated", "bits_stored"),
    [(16, 16), (32, 12)],
)
def test_jpeg_extended_precisions_gdcm_gets_wrong_are_declined(bits_allocated, bits_stored):
    ds = pydicom.dcmread(_local("JPEG-lossy.dcm"))
    runner = _runner_for(ds)
    runner.bits_allocated, runner.bits_stored = bits_allocated, bits_stored
    with pytest.raises(ValueError, match="JPEG Extended needs"):
        dicom_gdcm.decode_frame(b"\xff\xd8", runner)
