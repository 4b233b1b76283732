"""Image sizes read from compressed codestream headers (JPEG, JPEG-LS, JPEG 2000), before any
decoder runs: decoders allocate their output from these headers, not from the DICOM header."""

from __future__ import annotations

import struct

_JPEG_SOF = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})  # + JPEG-LS SOF55


def jpeg_frame_size(buf: bytes) -> tuple[int, int, int, int | None] | None:
    """(width, height, components, precision) from a JPEG or JPEG-LS SOF segment, else None."""
    if buf[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(buf)
    while pos + 4 <= end:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any SOF
            return None
        (length,) = struct.unpack_from(">H", buf, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 10 > end:
                return None
            height, width = struct.unpack_from(">HH", buf, pos + 5)
            return width, height, buf[pos + 9], buf[pos + 4]
        if length < 2:
            return None
        pos += 2 + length
    return None


def j2k_frame_size(buf: bytes) -> tuple[int, int, int, int | None] | None:
    """(width, height, components, None) from a JPEG 2000 SIZ segment (raw or JP2-boxed), else
    None (the precision is per component there)."""
    offset = 0
    if buf.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        offset = 12
        while offset + 8 <= len(buf):
            (length,) = struct.unpack_from(">I", buf, offset)
            header = 8
            if length == 1 and offset + 16 <= len(buf):  # 64-bit XLBox
                (length,) = struct.unpack_from(">Q", buf, offset + 8)
                header = 16
            if buf[offset + 4 : offset + 8] == b"jp2c":
                offset += header
                break
            if length < header:
                return None
            offset += length
        else:
            return None
    if buf[offset : offset + 4] != b"\xff\x4f\xff\x51" or offset + 42 > len(buf):
        return None
    xsiz, ysiz, x_off, y_off = struct.unpack_from(">IIII", buf, offset + 8)
    (components,) = struct.unpack_from(">H", buf, offset + 40)
    return xsiz - x_off, ysiz - y_off, components, None
