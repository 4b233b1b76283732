"""Bounded streaming decompression: bombs cost no more than the bytes asked for."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

from clearscan.imaging import UnsupportedFormat, sniff
from clearscan.imaging.inflate import gunzip_prefix, inflate_chunks, inflate_prefix


def test_gunzip_prefix_is_bounded():
    # ~256 MiB of zeros in ~256 KiB of concatenated gzip members.
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    bomb = member * 256
    tracemalloc.start()
    try:
        head = gunzip_prefix(bomb, 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert head == bytes(1000)
    assert peak < 8 * 1024 * 1024
    with pytest.raises(UnsupportedFormat, match="gzip"):
        sniff(bomb)


def test_gunzip_prefix_follows_members_and_stops_at_end():
    data = gzip.compress(b"abc") + gzip.compress(b"def")
    assert gunzip_prefix(data, 100) == b"abcdef"
    assert gunzip_prefix(data, 4) == b"abcd"
    original = bytes(range(256)) * 64
    packed = gzip.compress(original, compresslevel=1)
    partial = gunzip_prefix(packed[: len(packed) // 2], len(original))
    assert 0 < len(partial) < len(original)
    assert original.startswith(partial)


@pytest.mark.parametrize("step", [1000, 1 << 16, 1 << 20])
def test_inflate_chunks_yields_everything_in_bounded_chunks(step):
    """Members are followed, trailing junk ignored, every chunk at most `step` bytes, and the
    output equals zlib's own one-shot inflate (also for highly compressible data, where one
    input piece inflates to far more than `step`)."""
    import os

    parts = [os.urandom(70_000), bytes(3_000_000), b"tail" * 1000]
    data = b"".join(gzip.compress(p, mtime=0) for p in parts) + b"not a member"
    chunks = list(inflate_chunks(data, wbits=16 + zlib.MAX_WBITS, step=step))
    assert max(len(c) for c in chunks) <= step
    assert b"".join(chunks) == b"".join(parts)
    truncated = gzip.compress(parts[1], mtime=0)[:-20]
    got = b"".join(inflate_chunks(truncated, wbits=16 + zlib.MAX_WBITS, step=step))
    assert 0 < len(got) <= len(parts[1]) and got == parts[1][: len(got)]


def test_inflate_prefix_raw_deflate_is_capped():
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = packer.compress(bytes(20_000_000)) + packer.flush()
    assert len(raw) < 50_000
    assert inflate_prefix(raw, 1234, wbits=-zlib.MAX_WBITS) == bytes(1234)


def test_corrupt_stream_is_a_corrupt_image():
    from clearscan.imaging import CorruptImage

    with pytest.raises(CorruptImage, match="corrupt compressed data"):
        list(inflate_chunks(b"\x1f\x8b\x08\x00" + b"\xff" * 40, wbits=16 + zlib.MAX_WBITS))
