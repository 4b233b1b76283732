"""Blob storage: content-addressed, verified on read. Local files, or S3 (`storage.s3`, imported
only when configured: it needs boto3, the `s3` extra)."""

from clearscan.storage.base import BlobError, BlobIntegrityError, BlobNotFound, BlobStore
from clearscan.storage.local import LocalBlobStore

__all__ = ["BlobError", "BlobIntegrityError", "BlobNotFound", "BlobStore", "LocalBlobStore"]
