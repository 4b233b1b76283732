"""GDCM as the last-resort pixel-data decoder, run in a child process of its own.

What one decoder refuses another may read: pylibjpeg's libjpeg rejects some valid 12-bit JPEG
Extended streams (pydicom's ``JPEG-lossy.dcm`` test file fails with libjpeg error -1038), and
GDCM, which carries its own 12-bit libjpeg, decodes them; pydicom's own GDCM plugin declines
12-bit JPEG Extended, which this one accepts (9-12 bits stored in 16 bits allocated).

GDCM is not run inside the server. Fed malformed codestreams (corrupt JPEG 2000, lossless or
12-bit JPEG), its decoders end the process with a segmentation fault or an abort, and a fallback
is by nature handed exactly the frames the other decoders refused. So :func:`register` swaps
pydicom's in-process ``gdcm`` plugin for this one, labelled :data:`PLUGIN`, on every transfer
syntax GDCM supports: each frame goes to a short-lived ``python -I gdcm_child.py`` process with
memory and CPU caps and a wall-clock timeout (:mod:`clearscan.imaging.formats.gdcm_child`), and a
crash there is one more refused frame. The process costs about 0.1 s, paid only when every other
plugin has failed.

This is a decoding plugin in pydicom's sense: ``is_available``, ``DECODER_DEPENDENCIES`` and a
frame-decoding function (:func:`decode_frame`) that pydicom calls with its ``DecodeRunner``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["DECODER_DEPENDENCIES", "PLUGIN", "decode_frame", "is_available", "register"]

PLUGIN = "gdcm-isolated"
CHILD = Path(__file__).with_name("gdcm_child.py")
TIMEOUT_SECONDS = 60.0

_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
_JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
# pydicom's plugin contract: the package each supported transfer syntax needs.
DECODER_DEPENDENCIES = {
    uid: ("python-gdcm>=3.0",)
    for uid in (
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        _JPEG_EXTENDED,
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction
        *_JPEG_LS,
        *_JPEG_2000,
    )
}
_MAX_REASON = 120

_lock = threading.Lock()
_registered = False


def is_available(uid: str) -> bool:
    """Whether this plugin can decode transfer syntax ``uid`` here (pydicom's contract)."""
    return uid in DECODER_DEPENDENCIES and importlib.util.find_spec("gdcm") is not None


def register() -> None:
    """Put this plugin in place of pydicom's in-process GDCM plugin, once per process."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        from pydicom.pixels import get_decoder
        from pydicom.uid import UID

        for uid in DECODER_DEPENDENCIES:
            decoder = get_decoder(UID(uid))
            with contextlib.suppress(ValueError):  # absent: pydicom without its GDCM plugin
                decoder.remove_plugin("gdcm")
            with contextlib.suppress(ValueError):  # already there (this module was reloaded)
                decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
        _registered = True


def decode_frame(src: bytes, runner: Any) -> bytes:
    """Decode one encoded frame with GDCM in a child process (pydicom's ``DecodeFunction``).

    ``runner`` is pydicom's ``DecodeRunner``: it gives the frame's geometry and pixel format,
    and learns the layout of what comes back. Raises ``ValueError`` when the frame is one GDCM
    is known to get wrong, or when the child fails, crashes or runs out of time; pydicom then
    reports it with the other plugins' failures.
    """
    ts = str(runner.transfer_syntax)
    samples = int(runner.samples_per_pixel)
    bits_allocated = int(runner.bits_allocated)
    bits_stored = int(runner.bits_stored)
    pixel_rep = int(runner.pixel_representation)
    photometric = str(runner.photometric_interpretation)
    planar = int(runner.planar_configuration) if samples > 1 else 0
    updates: dict[str, Any] = {}

    if (
        ts == _JPEG_EXTENDED
        and bits_stored > 8
        and not (bits_stored <= 12 and bits_allocated == 16)
    ):
        raise ValueError("JPEG Extended needs 8 bits stored, or 9-12 in 16 bits allocated")
    if ts in _JPEG_LS:
        # GDCM returns JPEG-LS colour-by-pixel, in a container sized by the codestream precision.
        bits_stored = int(runner.get_option("jls_precision", bits_stored))
        if bits_stored in (6, 7):
            raise ValueError("GDCM cannot decode JPEG-LS with a precision of 6 or 7 bits")
        if ts == _JPEG_LS_NEAR_LOSSLESS and pixel_rep == 1 and bits_stored < 8:
            raise ValueError("GDCM cannot decode signed lossy JPEG-LS under 8 bits")
        bits_allocated = 8 if bits_stored <= 8 else 16
        updates.update(planar_configuration=0, bits_allocated=bits_allocated)
    elif ts in _JPEG_2000:
        bits_stored = int(runner.get_option("j2k_precision", bits_stored))
        bits_allocated = 8 if bits_stored <= 8 else 16 if bits_stored <= 16 else 32
        updates["bits_allocated"] = bits_allocated
        if photometric in ("YBR_ICT", "YBR_RCT"):  # GDCM returns these as RGB
            updates["photometric_interpretation"] = "RGB"
    if not 1 <= bits_stored <= bits_allocated:
        raise ValueError(f"invalid precision {bits_stored} for {bits_allocated} bits allocated")

    rows, columns = int(runner.rows), int(runner.columns)
    params = {
        "transfer_syntax": ts,
        "rows": rows,
        "columns": columns,
        "samples": samples,
        "bits_allocated": bits_allocated,
        "bits_stored": bits_stored,
        "pixel_rep": pixel_rep,
        "photometric": photometric,
        "planar_configuration": planar,
    }
    frame = _run_child(src, params)
    expected = rows * columns * samples * bits_allocated // 8
    if len(frame) != expected:
        raise ValueError(f"GDCM returned {len(frame):,} bytes, expected {expected:,}")
    for name, value in updates.items():
        runner.set_option(name, value)
    return frame


def _run_child(src: bytes, params: dict[str, Any]) -> bytes:
    header = json.dumps(params).encode()
    try:
        done = subprocess.run(  # noqa: S603 - our own script, run by this interpreter
            [sys.executable, "-I", str(CHILD)],
            input=struct.pack(">I", len(header)) + header + bytes(src),
            capture_output=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"GDCM took longer than {TIMEOUT_SECONDS:g} s") from None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise ValueError(f"GDCM crashed ({name}) on this frame")
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1][:_MAX_REASON] if lines else f"exit status {done.returncode}"
        raise ValueError(f"GDCM could not decode the frame: {reason}")
    return done.stdout
