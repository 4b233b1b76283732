"""S3 content-addressed store: s3://<bucket>/<prefix>/ab/cd/<sha256>, the same layout as the local
store. Every read re-hashes; a blob is written once (a conditional put, `If-None-Match: *`, so a
second writer of the same bytes gets 412 and nothing is rewritten); objects above the multipart
threshold go up in parts. Staged job inputs live under <prefix>/.staging/<key>. boto3 (the `s3`
extra) is imported only when this store is built."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

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
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_ALREADY_THERE = {"PreconditionFailed", "412"}
_CHUNK = 1 << 20
EXTRA = "s3"  # the optional dependency group that installs boto3


class S3BlobStore:
    backend = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = 64 * 2**20,
        multipart_chunksize: int = 16 * 2**20,
        max_workers: int = 8,
    ) -> None:
        """Raises ImportError when boto3 is not installed (the `s3` extra)."""
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=max(10, max_workers * 2),
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_workers,
        )
        self.multipart_threshold = multipart_threshold
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3-blob-io")
        # botocore older than 1.35 has no If-None-Match on PutObject: check with HEAD first
        members = self.client.meta.service_model.operation_model("PutObject").input_shape.members
        self.conditional_put = "IfNoneMatch" in members

    def __repr__(self) -> str:
        return f"S3BlobStore({self.location})"

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, digest: str) -> str:
        if not _HEX64.match(digest):
            raise BlobNotFound(f"not a sha256 digest: {digest[:80]!r}")
        name = f"{digest[:2]}/{digest[2:4]}/{digest}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, exc: Exception, what: str) -> BlobError:
        return BlobError(f"blob store {self.location} failed to {what}: {exc}")

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        key = self.key(digest)
        if len(data) >= self.multipart_threshold:
            if not self.exists(digest):
                self._upload(io.BytesIO(data), key, digest)
            return digest
        if not self.conditional_put and self.exists(digest):
            return digest
        extra = {"IfNoneMatch": "*"} if self.conditional_put else {}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ChecksumSHA256=_b64(hashlib.sha256(data).digest()),
                **extra,
            )
        except Exception as exc:
            if _code(exc) in _ALREADY_THERE:
                return digest  # written before: a blob is written once
            raise self._error(exc, f"store blob {digest}") from exc
        return digest

    def put_many(self, items: list[bytes]) -> list[str]:
        """Puts side by side on a small thread pool; digests in order."""
        if len(items) <= 1:
            return [self.put(d) for d in items]
        return list(self._pool.map(self.put, items))

    def put_batch(self, items: list[bytes]) -> list[str]:
        """Each acknowledged PUT is durable: no barrier needed, only concurrency."""
        return self.put_many(items)

    def put_file(self, source: Path) -> str:
        """Hash the file (one pass), then stream it up (multipart above the threshold), hashing
        again on the way: a file that changed in between is refused, its object removed."""
        h = hashlib.sha256()
        with source.open("rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                h.update(chunk)
        digest = h.hexdigest()
        if self.exists(digest):
            return digest
        with source.open("rb") as src:
            self._upload(src, self.key(digest), digest)
        return digest

    def _upload(self, src: BinaryIO, key: str, digest: str) -> None:
        reader = _HashingReader(src)  # no seek(): s3transfer reads it once, in order
        try:
            self.client.upload_fileobj(reader, self.bucket, key, Config=self.transfer)
        except Exception as exc:
            raise self._error(exc, f"upload blob {digest}") from exc
        if reader.hash.hexdigest() != digest:
            self.client.delete_object(Bucket=self.bucket, Key=key)
            raise BlobError(f"the file changed while it was stored: blob {digest} not stored")

    def _get_object(self, digest: str) -> Any:
        key = self.key(digest)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _code(exc) in _MISSING:
                raise BlobNotFound(f"stored data is missing: blob {digest} not found") from None
            raise self._error(exc, f"read blob {digest}") from exc

    def open(self, digest: str) -> BinaryIO:
        """A streaming reader; verified at the end (BlobIntegrityError on the last read)."""
        body = self._get_object(digest)["Body"]
        raw = _VerifyingReader(body, digest)
        return io.BufferedReader(raw, buffer_size=_CHUNK)

    def get(self, digest: str) -> bytes:
        body = self._get_object(digest)["Body"]
        try:
            data: bytes = body.read()
        except Exception as exc:
            raise self._error(exc, f"read blob {digest}") from exc
        finally:
            body.close()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobIntegrityError(f"stored data failed its integrity check: blob {digest}")
        return data

    def exists(self, digest: str) -> bool:
        try:
            key = self.key(digest)
        except BlobNotFound:
            return False
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _code(exc) in _MISSING:
                return False
            raise self._error(exc, f"look up blob {digest}") from exc
        return True

    def check_writable(self) -> None:
        """The bucket exists and these credentials reach it (HEAD bucket: no probe objects, which
        a versioned bucket would keep forever)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            code = _code(exc)
            if code in _MISSING:
                raise BlobError(f"S3 bucket {self.bucket!r} does not exist") from None
            if code in {"403", "AccessDenied", "Forbidden"}:
                raise BlobError(f"S3 bucket {self.bucket!r} is not accessible: {exc}") from None
            raise BlobError(f"S3 bucket {self.bucket!r} is unreachable: {exc}") from None

    # --- staging ------------------------------------------------------------------------------

    @property
    def _staging_prefix(self) -> str:
        return f"{self.prefix}/{STAGING}/" if self.prefix else f"{STAGING}/"

    def _staged_key(self, key: str) -> str:
        return self._staging_prefix + check_staged_key(key)

    def _stage(self, data: bytes) -> str:
        key = new_staged_key()
        name = self._staged_key(key)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=data,
                ChecksumSHA256=_b64(hashlib.sha256(data).digest()),
            )
        except Exception as exc:
            raise self._error(exc, "stage an input") from exc
        return key

    def stage_batch(self, items: list[bytes]) -> list[str]:
        if len(items) <= 1:
            return [self._stage(d) for d in items]
        return list(self._pool.map(self._stage, items))

    def stage_file(self, source: Path) -> str:
        key = new_staged_key()
        with source.open("rb") as src:
            try:
                self.client.upload_fileobj(
                    src, self.bucket, self._staged_key(key), Config=self.transfer
                )
            except Exception as exc:
                raise self._error(exc, "stage an input") from exc
        return key

    def open_staged(self, key: str) -> BinaryIO:
        name = self._staged_key(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        except Exception as exc:
            if _code(exc) in _MISSING:
                raise BlobNotFound(f"staged input {key} is gone") from None
            raise self._error(exc, f"read staged input {key}") from exc
        return io.BufferedReader(_BodyReader(body), buffer_size=_CHUNK)

    def get_staged(self, key: str, digest: str) -> bytes:
        with self.open_staged(key) as f:
            try:
                data = f.read()
            except BlobError:
                raise
            except Exception as exc:
                raise self._error(exc, f"read staged input {key}") from exc
        return verified(data, digest, f"staged input {key}")

    def discard_staged(self, key: str) -> None:
        name = self._staged_key(key)
        try:  # S3 answers 204 for a key that is not there
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            raise self._error(exc, f"delete staged input {key}") from exc

    def staged_keys(self, older_than_s: float) -> list[str]:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._staging_prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self._staging_prefix) :]
                    if obj["LastModified"] < cutoff and "/" not in name:
                        out.append(name)
        except Exception as exc:
            raise self._error(exc, "list staged inputs") from exc
        return out


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class _HashingReader:
    """A read-only, non-seekable view that hashes what passes through."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        chunk = self.src.read(n)
        self.hash.update(chunk)
        return chunk


class _BodyReader(io.RawIOBase):
    """A raw reader over a botocore streaming body."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.body.read(len(buffer))
        n = len(chunk)
        buffer[:n] = chunk
        return n

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()


class _VerifyingReader(io.RawIOBase):
    def __init__(self, body: Any, digest: str) -> None:
        self.body = body
        self.digest = digest
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.body.read(len(buffer))
        if not chunk:
            if self.hash.hexdigest() != self.digest:
                raise BlobIntegrityError(
                    f"stored data failed its integrity check: blob {self.digest}"
                )
            return 0
        self.hash.update(chunk)
        n = len(chunk)
        buffer[:n] = chunk
        return n

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()
