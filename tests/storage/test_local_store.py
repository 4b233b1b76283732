"""What only the local store does (the shared contract runs in test_blob_contract.py against the
local store and S3): atomic writes leave no temporary files, and the folder is made on demand."""

from __future__ import annotations

from clearscan.storage import LocalBlobStore


def test_writes_leave_no_temporary_files(tmp_path):
    store = LocalBlobStore(tmp_path)
    store.put(b"hello")
    store.put_many([b"a", b"b", b"a"])
    store.put_batch([b"c"])
    assert not list(tmp_path.rglob(".tmp-*"))


def test_check_writable_makes_the_folder(tmp_path):
    store = LocalBlobStore(tmp_path / "b")
    store.check_writable()
    assert (tmp_path / "b").is_dir()
