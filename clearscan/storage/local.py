"""Local content-addressed store: <root>/ab/cd/<sha256>. Writes are atomic and fsynced (temp file,
fsync, rename, fsync directory), so an acknowledged blob survives a crash; reads re-hash.
Staged job inputs live in <root>/.staging/<key>, written the same way."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from clearscan.storage.base import (
    STAGING,
    BlobError,
    BlobIntegrityError,
    BlobNotFound,
    check_staged_key,
    new_staged_key,
    verified,
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class LocalBlobStore:
    backend = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if not _HEX64.match(digest):
            raise BlobNotFound(f"not a sha256 digest: {digest[:80]!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o440)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return digest

    def put_batch(self, items: list[bytes]) -> list[str]:
        """Many blobs with one file-system sync at the end instead of two fsyncs each (dataset
        imports: thousands of small images). Durable when this returns."""
        digests = []
        dirs: set[Path] = set()
        for data in items:
            digest = hashlib.sha256(data).hexdigest()
            digests.append(digest)
            path = self._path(digest)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o440)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dirs.add(path.parent)
        if dirs:
            os.sync()
        return digests

    def put_file(self, source: Path) -> str:
        """Store a file's bytes without holding them in memory (large CSV tables)."""
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            path = self._path(digest)
            if path.exists():
                Path(tmp).unlink()
                return digest
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o440)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return digest

    def open(self, digest: str) -> BinaryIO:
        """A reader of the stored file (not re-hashed: callers that stream take the risk)."""
        path = self._path(digest)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"stored data is missing: blob {digest} not found") from None

    def put_many(self, items: list[bytes]) -> list[str]:
        """Each put waits on two fsyncs; doing them side by side halves a request's wait."""
        if len(items) <= 1:
            return [self.put(d) for d in items]
        return list(_io_pool().map(self.put, items))

    def get(self, digest: str) -> bytes:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"stored data is missing: blob {digest} not found") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobIntegrityError(f"stored data failed its integrity check: blob {digest}")
        return data

    def exists(self, digest: str) -> bool:
        try:
            return self._path(digest).exists()
        except BlobNotFound:
            return False

    def check_writable(self) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise BlobError(f"blob store at {self.root} is not writable: {exc}") from exc

    # --- staging ------------------------------------------------------------------------------

    @property
    def staging(self) -> Path:
        return self.root / STAGING

    def _staged_path(self, key: str) -> Path:
        return self.staging / check_staged_key(key)

    def stage_batch(self, items: list[bytes]) -> list[str]:
        """One file-system sync for the lot, as put_batch."""
        self.staging.mkdir(mode=0o700, exist_ok=True)
        keys = []
        for data in items:
            key = new_staged_key()
            fd, tmp = tempfile.mkstemp(dir=self.staging, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self._staged_path(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            keys.append(key)
        if keys:
            os.sync()
        return keys

    def stage_file(self, source: Path) -> str:
        self.staging.mkdir(mode=0o700, exist_ok=True)
        key = new_staged_key()
        fd, tmp = tempfile.mkstemp(dir=self.staging, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._staged_path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.staging)
        return key

    def open_staged(self, key: str) -> BinaryIO:
        try:
            return self._staged_path(key).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"staged input {key} is gone") from None

    def get_staged(self, key: str, digest: str) -> bytes:
        with self.open_staged(key) as f:
            return verified(f.read(), digest, f"staged input {key}")

    def discard_staged(self, key: str) -> None:
        self._staged_path(key).unlink(missing_ok=True)

    def staged_keys(self, older_than_s: float) -> list[str]:
        if not self.staging.is_dir():
            return []
        cutoff = time.time() - older_than_s
        out = []
        for p in self.staging.iterdir():
            try:
                if not p.name.startswith(".") and p.stat().st_mtime < cutoff:
                    out.append(p.name)
            except FileNotFoundError:  # discarded meanwhile
                continue
        return out


@functools.cache
def _io_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-io")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
