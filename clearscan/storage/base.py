"""Blob store contract: content-addressed (sha256) bytes, verified on every read; and a staging
area beside it for the inputs of accepted jobs, which are deleted once the job has used them."""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Protocol

from clearscan.errors import Unavailable


class BlobError(Unavailable):
    """Base error of blob stores: the store cannot serve now (503)."""

    title = "Stored data unavailable"


class BlobNotFound(BlobError):
    """No blob has this address: stored data went missing (410)."""

    status_code = 410
    title = "Stored data missing"


class BlobIntegrityError(BlobError):
    """The stored bytes no longer hash to their address: corruption or tampering (500)."""

    status_code = 500
    title = "Stored data damaged"


_STAGED_KEY = re.compile(r"^[0-9a-f]{32}$")
STAGING = ".staging"
"""The staging area's folder (local) or key prefix (S3) under the blob store's root. Staged
inputs are raw uploads (DICOM as received, before de-identification): they are never blobs,
never referenced by a case, never copied by a backup, and deleted once their job is done."""


def new_staged_key() -> str:
    return secrets.token_hex(16)


def check_staged_key(key: str) -> str:
    """`key` when it is a staging key (32 hex digits), else BlobNotFound: keys come from the
    database, never from a client, but are checked before they make a path."""
    if not _STAGED_KEY.match(key):
        raise BlobNotFound(f"not a staging key: {key[:80]!r}")
    return key


def verified(data: bytes, digest: str, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != digest:
        raise BlobIntegrityError(f"stored data failed its integrity check: {what}")
    return data


class BlobStore(Protocol):
    backend: str  # "local" or "s3": what /api/v1/health reports

    def put(self, data: bytes) -> str:
        """Store `data` durably; return its sha256 hex digest. Idempotent."""
        ...

    def put_many(self, items: list[bytes]) -> list[str]:
        """Store several blobs (concurrently where the backend can); digests in order."""
        ...

    def put_batch(self, items: list[bytes]) -> list[str]:
        """Store many blobs with one durability barrier at the end; digests in order."""
        ...

    def put_file(self, source: Path) -> str:
        """Store a file's bytes without holding them in memory; return the digest."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """A reader of the stored bytes (not verified: for streaming large blobs)."""
        ...

    def get(self, digest: str) -> bytes:
        """Return the bytes for `digest`, verified; raise BlobNotFound / BlobIntegrityError."""
        ...

    def exists(self, digest: str) -> bool: ...

    def check_writable(self) -> None:
        """Raise BlobError when the store cannot accept writes (used by /readyz)."""
        ...

    # --- staging: the inputs of accepted jobs, until the job is done with them ----------------

    def stage_batch(self, items: list[bytes]) -> list[str]:
        """Keep each item durably under a new random key until discarded; keys in order."""
        ...

    def stage_file(self, source: Path) -> str:
        """Keep a file's bytes durably under a new random key until discarded."""
        ...

    def open_staged(self, key: str) -> BinaryIO:
        """A reader of staged bytes (BlobNotFound when discarded or never staged)."""
        ...

    def get_staged(self, key: str, digest: str) -> bytes:
        """The staged bytes, checked against `digest` (their sha256, which the job keeps)."""
        ...

    def discard_staged(self, key: str) -> None:
        """Delete staged bytes; nothing happens when they are already gone."""
        ...

    def staged_keys(self, older_than_s: float) -> list[str]:
        """The keys of staged inputs written more than `older_than_s` seconds ago."""
        ...
