"""Blob storage: content-addressed, verified on read. Local files now; S3 joins later."""

from clearscan.storage.base import BlobError, BlobIntegrityError, BlobNotFound, BlobStore
from clearscan.storage.local import LocalBlobStore

__all__ = ["BlobError", "BlobIntegrityError", "BlobNotFound", "BlobStore", "LocalBlobStore"]
