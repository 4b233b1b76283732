"""Where backups live: a local folder or an S3 bucket prefix, each holding one folder (prefix)
per backup. A backup is complete once its `manifest.json` exists: it is written last (locally
the whole folder is renamed into place), so an interrupted backup is never mistaken for one."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from clearscan.backup.errors import BackupDamaged, BackupError

MANIFEST = "manifest.json"
PARTIAL = ".partial-"


@dataclass(frozen=True)
class S3Options:
    """How to reach S3 (the CLEARSCAN_S3_* settings; unset: the standard AWS chain)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


class Written:
    """A file written into a backup: its size and sha256 as stored."""

    def __init__(self) -> None:
        self.size = 0
        self.hash = hashlib.sha256()

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.size += len(chunk)
            self.hash.update(chunk)
            yield chunk


class Location(Protocol):
    url: str

    def names(self) -> list[str]:
        """Complete backups here (oldest first; names sort by time)."""
        ...

    def partial_names(self) -> list[str]:
        """Backups begun here and never finished."""
        ...

    def write(self, name: str, rel: str, chunks: Iterable[bytes], *, partial: bool) -> Written: ...

    def commit(self, name: str, manifest: bytes) -> None: ...

    def open(self, name: str, rel: str) -> BinaryIO: ...

    def read_manifest(self, name: str) -> bytes: ...

    def delete(self, name: str, *, partial: bool = False) -> None: ...


class LocalLocation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _dir(self, name: str, partial: bool) -> Path:
        return self.root / (PARTIAL + name if partial else name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and (p / MANIFEST).is_file()
        )

    def partial_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name[len(PARTIAL) :]
            for p in self.root.iterdir()
            if p.is_dir() and p.name.startswith(PARTIAL)
        )

    def write(self, name: str, rel: str, chunks: Iterable[bytes], *, partial: bool) -> Written:
        path = self._dir(name, partial) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        out = Written()
        with path.open("wb") as f:
            for chunk in out.count(chunks):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        return out

    def commit(self, name: str, manifest: bytes) -> None:
        staging = self._dir(name, True)
        with (staging / MANIFEST).open("wb") as f:
            f.write(manifest)
            f.flush()
            os.fsync(f.fileno())
        os.sync()  # every file of the backup on disk before it counts as one
        os.rename(staging, self._dir(name, False))

    def open(self, name: str, rel: str) -> BinaryIO:
        try:
            return (self._dir(name, False) / rel).open("rb")
        except FileNotFoundError:
            raise BackupDamaged(f"{rel} is missing from backup {name}") from None

    def read_manifest(self, name: str) -> bytes:
        path = self._dir(name, False) / MANIFEST
        if not path.is_file():
            raise BackupError(
                f"no backup at {path.parent}: it has no {MANIFEST} (not a backup, or one that "
                "never finished)"
            )
        return path.read_bytes()

    def delete(self, name: str, *, partial: bool = False) -> None:
        shutil.rmtree(self._dir(name, partial), ignore_errors=True)


class S3Location:
    """s3://bucket/prefix: backups as objects under `<prefix>/<name>/`."""

    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        try:
            import boto3
        except ImportError:
            raise BackupError(
                "backups to S3 need boto3: pip install 'clearscan[s3]' (the `s3` extra)"
            ) from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=options.endpoint_url or None,
            region_name=options.region or None,
            aws_access_key_id=options.access_key_id or None,
            aws_secret_access_key=options.secret_access_key or None,
        )

    def _key(self, name: str, rel: str = "") -> str:
        key = f"{name}/{rel}" if rel else f"{name}/"
        return f"{self.prefix}/{key}" if self.prefix else key

    def _folders(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    out.append(cp["Prefix"][len(base) :].rstrip("/"))
        except Exception as exc:
            raise BackupError(f"cannot list backups at {self.url}: {exc}") from None
        return out

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception:
            return False
        return True

    def names(self) -> list[str]:
        return sorted(f for f in self._folders() if self._exists(self._key(f, MANIFEST)))

    def partial_names(self) -> list[str]:
        return sorted(f for f in self._folders() if not self._exists(self._key(f, MANIFEST)))

    def write(self, name: str, rel: str, chunks: Iterable[bytes], *, partial: bool) -> Written:
        # objects go straight to their final key: on S3 the manifest, written last, is what
        # makes a backup complete (renaming a prefix would copy every object)
        out = Written()
        try:
            self.client.upload_fileobj(
                _IterReader(out.count(chunks)), self.bucket, self._key(name, rel)
            )
        except BackupError:
            raise
        except Exception as exc:
            raise BackupError(f"cannot write {rel} to {self.url}/{name}: {exc}") from None
        return out

    def commit(self, name: str, manifest: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name, MANIFEST), Body=manifest)
        except Exception as exc:
            raise BackupError(f"cannot write the manifest to {self.url}/{name}: {exc}") from None

    def open(self, name: str, rel: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name, rel))["Body"]
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                raise BackupDamaged(f"{rel} is missing from backup {name}") from None
            raise BackupError(f"cannot read {rel} of {self.url}/{name}: {exc}") from None
        return io.BufferedReader(_BodyReader(body), buffer_size=1 << 20)

    def read_manifest(self, name: str) -> bytes:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(name, MANIFEST))
        except Exception:
            raise BackupError(
                f"no backup at {self.url}/{name}: it has no {MANIFEST} (not a backup, or one "
                "that never finished)"
            ) from None
        data: bytes = obj["Body"].read()
        return data

    def delete(self, name: str, *, partial: bool = False) -> None:
        # written objects sit under the final name even while partial (see write)
        prefix = self._key(name)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


def parse_location(where: str, s3: S3Options) -> Location:
    """A folder path or s3://bucket/prefix."""
    if where.startswith("s3://"):
        bucket, _, prefix = where[len("s3://") :].partition("/")
        if not bucket:
            raise BackupError(f"{where!r} names no bucket (s3://bucket/prefix)")
        return S3Location(bucket, prefix, s3)
    if "://" in where:
        raise BackupError(f"{where!r}: give a folder or s3://bucket/prefix")
    return LocalLocation(Path(where).expanduser().resolve())


def parse_backup(ref: str, s3: S3Options) -> tuple[Location, str]:
    """One backup: its folder path, or s3://bucket/prefix/<name>."""
    ref = ref.rstrip("/")
    if ref.startswith("s3://"):
        parent, _, name = ref.rpartition("/")
        if parent == "s3:/" or not name:
            raise BackupError(f"{ref!r} does not name a backup (s3://bucket/prefix/NAME)")
        return parse_location(parent, s3), name
    path = Path(ref).expanduser().resolve()
    return LocalLocation(path.parent), path.name


class _IterReader(io.RawIOBase):
    """A read-only file over an iterator of byte strings (for upload_fileobj)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.buf:
            try:
                self.buf = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self.buf))
        buffer[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


class _BodyReader(io.RawIOBase):
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
