"""Blob store contract: content-addressed (sha256) bytes, verified on every read."""

from __future__ import annotations

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
