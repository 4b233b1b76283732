"""Bounded streaming decompression of untrusted gzip / zlib / raw deflate data.

Nothing here ever inflates a whole stream in one call: output comes in chunks of a chosen size
and callers stop reading once they have what they need, so a compression bomb (a few kilobytes
that expand to gigabytes) costs no more memory than the caller asked for.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from clearscan.imaging.errors import CorruptImage

__all__ = ["GZIP_MAGIC", "gunzip_prefix", "inflate_chunks", "inflate_prefix"]

GZIP_MAGIC = b"\x1f\x8b"
_INFLATE_CHUNK = 1 << 20
_INFLATE_INPUT = 1 << 16


def gunzip_prefix(data: bytes, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes of the gzip stream ``data``.

    Decompression is streaming and stops as soon as ``limit`` bytes have been produced, so a gzip
    bomb cannot make this allocate more than ``limit`` bytes of output. Concatenated gzip members
    are followed. A stream that ends early simply yields fewer bytes; callers check the length.
    Raises :class:`CorruptImage` when the stream is not valid gzip.
    """
    return inflate_prefix(data, limit, wbits=16 + zlib.MAX_WBITS)


def inflate_prefix(data: bytes, limit: int, *, wbits: int) -> bytes:
    """Bounded streaming zlib decompression (``wbits`` as for :func:`zlib.decompressobj`).

    Returns at most ``limit`` bytes. For gzip (``wbits`` > 16) concatenated members are followed.
    """
    out = bytearray()
    for chunk in inflate_chunks(data, wbits=wbits, step=min(_INFLATE_CHUNK, max(limit, 1))):
        out += chunk[: limit - len(out)]
        if len(out) >= limit:
            break
    return bytes(out)


def inflate_chunks(data: bytes, *, wbits: int, step: int = _INFLATE_CHUNK) -> Iterator[bytes]:
    """Inflate ``data`` lazily, in output chunks of at most ``step`` bytes; for gzip (``wbits``
    > 16) concatenated members are followed, and trailing bytes that are not a member are
    ignored. The input goes in 64 KiB pieces, so no call copies the rest of a large input
    (zlib's ``unconsumed_tail`` would: quadratic time on a 100 MB upload). A truncated stream
    simply ends; raises :class:`CorruptImage` when the data is not valid zlib/gzip."""
    view = memoryview(data)
    pos = 0
    decomp = zlib.decompressobj(wbits=wbits)
    tail: bytes | memoryview = b""  # input given to zlib, not used yet (at most one piece)
    try:
        while True:
            if not tail:  # the next piece; past the end, b"" drains what zlib still holds
                tail = view[pos : pos + _INFLATE_INPUT]
                pos += len(tail)
            chunk = decomp.decompress(tail, step)
            if chunk:
                yield chunk
            if decomp.eof:
                rest = decomp.unused_data + bytes(view[pos : pos + 2])
                if wbits <= 16 or not rest.startswith(GZIP_MAGIC):
                    return  # end of the (last) stream; trailing bytes are ignored
                tail = decomp.unused_data
                decomp = zlib.decompressobj(wbits=wbits)
                continue
            tail = decomp.unconsumed_tail
            if not chunk and not tail and pos >= len(view):
                return  # input used up, nothing pending: the stream ends (possibly truncated)
    except zlib.error as exc:
        raise CorruptImage(f"corrupt compressed data ({exc})") from exc
