"""Decode one compressed DICOM frame with GDCM, in a process of its own.

Run as ``python -I gdcm_child.py`` by :mod:`clearscan.imaging.formats.dicom_gdcm`; never
imported by the server. GDCM's decoders can crash the whole process on malformed codestreams
(a segmentation fault or an abort), so they only ever see untrusted data here, where a crash
ends this process alone, under memory and CPU caps set before anything is read.

Protocol: stdin holds a 4-byte big-endian length, that many bytes of JSON (the frame's geometry
and pixel format, see :func:`main`), then the encoded frame. On success the decoded frame goes to
stdout and the exit status is 0; on failure a one-line reason goes to stderr and the status is 1.
Only the standard library and GDCM are imported.
"""

from __future__ import annotations

import json
import resource
import struct
import sys

_BASE_MEMORY = 512 * 1024 * 1024  # the interpreter and GDCM's libraries, with room to spare
_CPU_SECONDS = 30


def _cap(resource_id: int, value: int) -> None:
    _, hard = resource.getrlimit(resource_id)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(resource_id, (value, hard))


def main() -> int:
    stdin = sys.stdin.buffer
    (size,) = struct.unpack(">I", stdin.read(4))
    params = json.loads(stdin.read(size))
    rows, columns, samples = int(params["rows"]), int(params["columns"]), int(params["samples"])
    bits_allocated, bits_stored = int(params["bits_allocated"]), int(params["bits_stored"])
    expected = rows * columns * samples * bits_allocated // 8
    # The frame, GDCM's copy, its str result and the bytes made from it: about 5x the output.
    _cap(resource.RLIMIT_AS, _BASE_MEMORY + 6 * expected)
    _cap(resource.RLIMIT_CPU, _CPU_SECONDS)
    src = stdin.read()

    import gdcm

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((columns, rows, 1))
    image.SetDataElement(element)
    pi_type = gdcm.PhotometricInterpretation.GetPIType(str(params["photometric"]))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
    if samples > 1:
        image.SetPlanarConfiguration(int(params["planar_configuration"]))
    ts_type = gdcm.TransferSyntax.GetTSType(str(params["transfer_syntax"]))
    image.SetTransferSyntax(gdcm.TransferSyntax(ts_type))
    image.SetPixelFormat(
        gdcm.PixelFormat(
            samples, bits_allocated, bits_stored, bits_stored - 1, int(params["pixel_rep"])
        )
    )

    # GDCM hands the buffer back as a str (None when it cannot decode); surrogateescape restores
    # the raw bytes.
    buffer = image.GetBuffer()
    if not isinstance(buffer, str):
        print("GDCM could not decode the frame", file=sys.stderr)
        return 1
    frame = buffer.encode("utf-8", "surrogateescape")
    if len(frame) != expected:
        print(f"GDCM returned {len(frame):,} bytes, expected {expected:,}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(frame)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
