"""The blob-store contract, run against every backend: the local store and an S3 store on a real
S3 protocol server (moto, loopback). Content-addressed, written once, verified on every read."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from clearscan.storage import BlobError, BlobIntegrityError, BlobNotFound, BlobStore, LocalBlobStore

PART = 5 * 2**20  # S3's smallest multipart part


class LocalHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.store = LocalBlobStore(tmp_path / "blobs")

    def overwrite(self, digest: str, data: bytes) -> None:
        path = self.store._path(digest)
        path.chmod(0o640)
        path.write_bytes(data)

    def writes(self, digest: str) -> Any:
        """What changes when the blob is written again (the file is replaced by a rename)."""
        st = self.store._path(digest).stat()
        return (st.st_ino, st.st_mtime_ns)

    def multipart_parts(self, digest: str) -> int | None:
        return None


class S3Harness:
    def __init__(self, server: Any, **options: Any) -> None:
        from clearscan.storage.s3 import S3BlobStore

        self.client = server.client()
        self.bucket = server.new_bucket()
        # every write of a key leaves a version: "written once" is "one version"
        self.client.put_bucket_versioning(
            Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        self.store = S3BlobStore(
            self.bucket,
            "tenant/blobs",
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
            **options,
        )

    def overwrite(self, digest: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.store.key(digest), Body=data)

    def writes(self, digest: str) -> Any:
        key = self.store.key(digest)
        listed = self.client.list_object_versions(Bucket=self.bucket, Prefix=key)
        return sorted(v["VersionId"] for v in listed.get("Versions", []) if v["Key"] == key)

    def multipart_parts(self, digest: str) -> int | None:
        etag = self.client.head_object(Bucket=self.bucket, Key=self.store.key(digest))["ETag"]
        _, dash, parts = etag.strip('"').partition("-")
        return int(parts) if dash else 1


@pytest.fixture(params=["local", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "local":
        yield LocalHarness(tmp_path)
    else:
        server = request.getfixturevalue("s3_server")
        yield S3Harness(server, multipart_threshold=PART, multipart_chunksize=PART, max_workers=2)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_round_trip(harness):
    store: BlobStore = harness.store
    digest = store.put(b"hello")
    assert digest == sha(b"hello")
    assert store.get(digest) == b"hello" and store.exists(digest)
    store.check_writable()
    assert store.backend in ("local", "s3")


def test_put_is_idempotent_and_writes_once(harness):
    store: BlobStore = harness.store
    digest = store.put(b"image bytes")
    first = harness.writes(digest)
    assert first  # one version, or the file's identity
    assert store.put(b"image bytes") == digest
    assert store.put_many([b"image bytes", b"image bytes"]) == [digest, digest]
    assert store.put_batch([b"image bytes"]) == [digest]
    assert harness.writes(digest) == first


def test_put_file_of_an_existing_blob_writes_nothing(harness, tmp_path):
    store: BlobStore = harness.store
    digest = store.put(b"a,b\n1,2\n")
    first = harness.writes(digest)
    src = tmp_path / "t.csv"
    src.write_bytes(b"a,b\n1,2\n")
    assert store.put_file(src) == digest
    assert harness.writes(digest) == first


def test_bytes_changed_out_of_band_fail_the_integrity_check(harness):
    store: BlobStore = harness.store
    digest = store.put(b"some image bytes")
    harness.overwrite(digest, b"some imagE bytes")
    with pytest.raises(BlobIntegrityError):
        store.get(digest)


def test_open_streams_and_verifies(harness):
    store: BlobStore = harness.store
    data = os.urandom(3 * 2**20 + 17)
    digest = store.put(data)
    with store.open(digest) as f:
        chunks = list(iter(lambda: f.read(2**16), b""))
    assert len(chunks) > 1 and b"".join(chunks) == data
    if isinstance(harness, S3Harness):  # the S3 reader also checks the hash at the end
        harness.overwrite(digest, data[:-1] + b"\x00")
        with pytest.raises(BlobIntegrityError), store.open(digest) as f:
            f.read()


def test_missing_and_malformed_digests(harness):
    store: BlobStore = harness.store
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
    with pytest.raises(BlobNotFound):
        store.open("0" * 64)
    with pytest.raises(BlobNotFound):
        store.get("../../etc/passwd")
    assert not store.exists("0" * 64)
    assert not store.exists("../x")


def test_put_many_keeps_order(harness):
    store: BlobStore = harness.store
    items = [b"a", b"b", b"a", b"c" * 1000, os.urandom(4096)]
    digests = store.put_many(items)
    assert digests == [sha(x) for x in items]
    assert [store.get(d) for d in digests] == items
    assert store.put_batch(items[::-1]) == digests[::-1]


class _ReadSpy:
    """Records the largest single read of the source file."""

    largest = 0

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        _ReadSpy.largest = max(_ReadSpy.largest, len(chunk))
        return chunk

    def __enter__(self) -> _ReadSpy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def test_put_file_streams_a_large_file_in_parts(harness, tmp_path, monkeypatch):
    store: BlobStore = harness.store
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(12):
            f.write(os.urandom(2**20))
    real_open = Path.open

    def spy_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(self, mode, *args, **kwargs)
        return _ReadSpy(f) if self == src else f

    _ReadSpy.largest = 0
    monkeypatch.setattr(Path, "open", spy_open)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read whole"))
    digest = store.put_file(src)
    monkeypatch.undo()
    assert 0 < _ReadSpy.largest <= PART  # never the whole 12 MiB file at once
    assert digest == sha(src.read_bytes())
    assert store.get(digest) == src.read_bytes()
    parts = harness.multipart_parts(digest)
    assert parts is None or parts == 3  # S3: 5 + 5 + 2 MiB


def test_large_put_goes_up_in_parts_once(harness):
    store: BlobStore = harness.store
    data = os.urandom(PART + 1024)
    digest = store.put(data)
    first = harness.writes(digest)
    assert store.put(data) == digest and harness.writes(digest) == first
    parts = harness.multipart_parts(digest)
    assert parts is None or parts == 2


def test_s3_key_layout_mirrors_the_local_store(s3_server):
    h = S3Harness(s3_server)
    digest = h.store.put(b"x")
    keys = [o["Key"] for o in h.client.list_objects_v2(Bucket=h.bucket)["Contents"]]
    assert keys == [f"tenant/blobs/{digest[:2]}/{digest[2:4]}/{digest}"]


def test_s3_conditional_put_answers_412_on_a_second_write(s3_server):
    """The store writes with If-None-Match: *; the server refuses to replace an object."""
    h = S3Harness(s3_server)
    assert h.store.conditional_put
    calls: list[int] = []
    h.store.client.meta.events.register(
        "after-call.s3.PutObject",
        lambda http_response, **_: calls.append(http_response.status_code),
    )
    h.store.put(b"once")
    h.store.put(b"once")
    assert calls == [200, 412]


def test_s3_missing_bucket_is_not_writable(s3_server):
    from clearscan.storage.s3 import S3BlobStore

    store = S3BlobStore(
        "no-such-bucket-here",
        endpoint_url=s3_server.endpoint_url,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
    with pytest.raises(BlobError, match="no-such-bucket-here"):
        store.check_writable()
    with pytest.raises(BlobError, match="no-such-bucket-here"):
        store.put(b"x")


# --- staging: inputs of accepted jobs, kept apart from the blobs and deleted when used ----------


def test_staged_inputs_round_trip_and_are_not_blobs(harness, tmp_path):
    store: BlobStore = harness.store
    keys = store.stage_batch([b"raw one", b"raw two", b"raw one"])
    assert len(set(keys)) == 3  # a new key per input, even for equal bytes
    assert store.get_staged(keys[1], sha(b"raw two")) == b"raw two"
    with store.open_staged(keys[0]) as f:
        assert f.read() == b"raw one"
    src = tmp_path / "upload.zip"
    src.write_bytes(os.urandom(3 * 2**20))
    big = store.stage_file(src)
    assert store.get_staged(big, sha(src.read_bytes())) == src.read_bytes()
    # staged bytes are no blob: the content address finds nothing
    assert not store.exists(sha(b"raw one"))
    with pytest.raises(BlobIntegrityError):
        store.get_staged(keys[0], sha(b"something else"))


def test_discard_is_idempotent_and_the_input_is_gone(harness):
    store: BlobStore = harness.store
    (key,) = store.stage_batch([b"raw"])
    store.discard_staged(key)
    store.discard_staged(key)
    with pytest.raises(BlobNotFound):
        store.open_staged(key)
    with pytest.raises(BlobNotFound):
        store.get_staged(key, sha(b"raw"))


def test_staged_keys_lists_by_age_and_refuses_foreign_keys(harness):
    store: BlobStore = harness.store
    keys = store.stage_batch([b"a", b"b"])
    assert set(store.staged_keys(-60)) == set(keys)  # everything older than a minute from now
    assert store.staged_keys(3600) == []  # nothing is an hour old
    for bad in ("../../etc/passwd", "ab" * 32, "", "A" * 32):
        with pytest.raises(BlobNotFound):
            store.open_staged(bad)
        with pytest.raises(BlobNotFound):
            store.discard_staged(bad)


def test_local_staging_sits_beside_the_blobs_readable_by_the_owner_only(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    (key,) = store.stage_batch([b"raw"])
    path = tmp_path / "blobs" / ".staging" / key
    assert path.read_bytes() == b"raw"
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [key]  # no temporary files left
