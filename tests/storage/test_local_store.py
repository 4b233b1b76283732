"""Content-addressed local blob store."""

from __future__ import annotations

import hashlib

import pytest

from clearscan.storage import BlobIntegrityError, BlobNotFound, LocalBlobStore


def test_put_get_roundtrip_and_idempotence(tmp_path):
    store = LocalBlobStore(tmp_path)
    d1 = store.put(b"hello")
    assert d1 == hashlib.sha256(b"hello").hexdigest()
    assert store.put(b"hello") == d1
    assert store.get(d1) == b"hello" and store.exists(d1)
    assert not list(tmp_path.rglob(".tmp-*"))


def test_flipped_byte_raises_integrity_error(tmp_path):
    store = LocalBlobStore(tmp_path)
    d = store.put(b"some image bytes")
    p = store._path(d)
    p.chmod(0o640)
    p.write_bytes(b"some imagE bytes")
    with pytest.raises(BlobIntegrityError):
        store.get(d)


def test_missing_and_malformed_digests(tmp_path):
    store = LocalBlobStore(tmp_path)
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
    with pytest.raises(BlobNotFound):
        store.get("../../etc/passwd")
    assert not store.exists("../x")


def test_check_writable(tmp_path):
    store = LocalBlobStore(tmp_path / "b")
    store.check_writable()


def test_put_many_keeps_order(tmp_path):
    store = LocalBlobStore(tmp_path)
    items = [b"a", b"b", b"a", b"c" * 1000]
    digests = store.put_many(items)
    assert digests == [hashlib.sha256(x).hexdigest() for x in items]
    assert [store.get(d) for d in digests] == items
