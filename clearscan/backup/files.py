"""Moving files in and out of a backup, checked against their hashes on the way: blobs (from a
local or S3 blob store), model files and the database dump."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from clearscan.backup import crypto
from clearscan.backup.errors import BackupDamaged, BackupError
from clearscan.backup.manifest import FileEntry
from clearscan.backup.target import Location, Written
from clearscan.storage import BlobStore

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def blob_path(digest: str) -> str:
    return f"blobs/{digest[:2]}/{digest[2:4]}/{digest}"


def stored_digests(store: BlobStore) -> set[str] | None:
    """Every blob address the store holds, listed in one pass (a folder walk, or an S3 listing),
    or None for a store that cannot list (then each candidate is looked up)."""
    root = getattr(store, "root", None)
    if store.backend == "local" and isinstance(root, Path):
        if not root.is_dir():
            return set()
        return {p.name for p in root.glob("??/??/*") if _HEX64.match(p.name)}
    client: Any = getattr(store, "client", None)
    if store.backend == "s3" and client is not None:
        prefix = getattr(store, "prefix", "")
        out: set[str] = set()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket,  # type: ignore[attr-defined]
            Prefix=f"{prefix}/" if prefix else "",
        )
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                if _HEX64.match(name):
                    out.add(name)
        return out
    return None


def put(location: Location, name: str, rel: str, src: BinaryIO, key: bytes | None) -> FileEntry:
    """Copy `src` into the backup as `rel` (encrypted with `key` when given)."""
    plain = Written()
    chunks: Iterator[bytes] = plain.count(crypto.plain_chunks(src))
    if key is not None:
        chunks = crypto.encrypt(chunks, key)
    stored = location.write(name, rel, chunks, partial=True)
    entry = FileEntry(path=rel, size=plain.size, sha256=plain.hash.hexdigest())
    if key is not None:
        entry.stored_size = stored.size
        entry.stored_sha256 = stored.hash.hexdigest()
    return entry


class _Tee:
    """Hashes what is read through it (the stored, possibly encrypted, bytes)."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.size = 0
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        chunk = self.src.read(n)
        self.size += len(chunk)
        self.hash.update(chunk)
        return chunk


def read_checked(
    location: Location,
    name: str,
    entry: FileEntry,
    key: bytes | None,
    sink: BinaryIO | None = None,
) -> str | None:
    """Read one file of the backup through, checking it against its manifest entry (writing the
    content to `sink` when given). Returns what is wrong with it, or None."""
    try:
        src = location.open(name, entry.path)
    except BackupDamaged:
        return f"{entry.path}: missing"
    tee = _Tee(src)
    size = 0
    h = hashlib.sha256()
    try:
        chunks = (
            crypto.decrypt(tee, key, what=entry.path)  # type: ignore[arg-type]
            if key is not None
            else crypto.plain_chunks(tee)  # type: ignore[arg-type]
        )
        for chunk in chunks:
            size += len(chunk)
            h.update(chunk)
            if sink is not None:
                sink.write(chunk)
    except BackupDamaged as exc:
        return exc.detail
    except OSError as exc:
        return f"{entry.path}: cannot be read ({exc})"
    except BackupError as exc:
        return f"{entry.path}: {exc.detail}"
    finally:
        src.close()
    if (
        key is not None
        and entry.stored_sha256 is not None
        and (tee.size != entry.stored_size or tee.hash.hexdigest() != entry.stored_sha256)
    ):
        return f"{entry.path}: the encrypted file differs from the manifest"
    if size != entry.size:
        return f"{entry.path}: {size} bytes, the manifest says {entry.size}"
    if h.hexdigest() != entry.sha256:
        return f"{entry.path}: sha256 mismatch (damaged or altered)"
    return None


def model_files(root: Path | None) -> list[tuple[str, Path]]:
    """The files of every stored model version (`name/version/...`), hidden folders skipped
    (imports being staged, versions being removed)."""
    if root is None or not root.is_dir():
        return []
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file() or p.is_symlink():
            continue
        out.append((rel.as_posix(), p))
    return out


def key_files(data_dir: Path) -> list[tuple[str, Path]]:
    """The secrets a data dir keeps in files when the settings do not give them (the names in
    clearscan.config ending in `_KEY_FILE`: the sign-in secret, the audit key...)."""
    from clearscan import config

    names = sorted(
        str(v) for k, v in vars(config).items() if k.endswith("_KEY_FILE") and isinstance(v, str)
    )
    return [(n, data_dir / n) for n in names if (data_dir / n).is_file()]


def data_files(data_dir: Path, database: Path | None) -> list[tuple[str, Path]]:
    """Other files at the top of the data dir (the audit anchor file...), neither keys nor the
    SQLite database (with its -wal / -shm / -journal files), nor hidden."""
    if not data_dir.is_dir():
        return []
    keys = {n for n, _ in key_files(data_dir)}
    skip = {database.name} if database is not None else set()
    out = []
    for p in sorted(data_dir.iterdir()):
        if p.name.startswith(".") or p.name in keys or not p.is_file() or p.is_symlink():
            continue
        if any(p.name == s or p.name.startswith(s + "-") for s in skip):
            continue
        out.append((p.name, p))
    return out


def hash_stream(src: BinaryIO) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: src.read(1 << 20), b""):
        size += len(chunk)
        h.update(chunk)
    return size, h.hexdigest()
