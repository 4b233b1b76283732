"""The manifest of a backup (`manifest.json`): what made it, the schema revision, and the size
and sha256 of every file in it. Sizes and hashes are of the content (a blob's sha256 is its
address); for an encrypted backup `stored_*` are those of the encrypted file as well, and the
manifest carries an HMAC of itself under the backup key."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from clearscan.backup import crypto
from clearscan.backup.errors import BackupDamaged, BackupError, BackupKeyError

FORMAT = "clearscan-backup/1"


class FileEntry(BaseModel):
    path: str  # inside the backup
    size: int
    sha256: str
    stored_size: int | None = None
    stored_sha256: str | None = None


class DatabaseEntry(FileEntry):
    kind: Literal["sqlite", "postgresql"]
    tables: dict[str, int]  # row counts in the snapshot, every table


class Encryption(BaseModel):
    algorithm: str = crypto.ALGORITHM
    key_id: str
    chunk_bytes: int = crypto.CHUNK


class Manifest(BaseModel):
    format: str = FORMAT
    name: str
    created_at: datetime
    app_version: str
    alembic_revision: str | None
    database: DatabaseEntry
    blob_source: str  # where the blobs were copied from
    blobs: list[FileEntry] = Field(default_factory=list)
    models: list[FileEntry] = Field(default_factory=list)
    # the data dir's key files (sign-in secret, audit key...): only in encrypted backups
    keys: list[FileEntry] = Field(default_factory=list)
    # other files at the top of the data dir (the audit anchor file...)
    data_files: list[FileEntry] = Field(default_factory=list)
    # referenced by the database but already missing from the blob store when it was made
    missing_blobs: list[str] = Field(default_factory=list)
    encryption: Encryption | None = None
    slot: str | None = None  # the schedule slot of a scheduled backup
    mac: str | None = None

    def files(self) -> list[FileEntry]:
        return [self.database, *self.blobs, *self.models, *self.keys, *self.data_files]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files())

    def body(self) -> bytes:
        """The canonical JSON the MAC covers (everything but the MAC)."""
        data = self.model_dump(mode="json", exclude={"mac"})
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def dump(self, key: bytes | None) -> bytes:
        if key is not None:
            self.mac = crypto.manifest_mac(key, self.body())
        return self.model_dump_json(indent=1).encode()


def load(raw: bytes, *, where: str) -> Manifest:
    try:
        data = json.loads(raw)
    except ValueError:
        raise BackupDamaged(f"{where}: manifest.json is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise BackupError(
            f"{where}: not a ClearScan backup this version can read (format {found!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BackupDamaged(
            f"{where}: manifest.json is damaged: {exc.errors()[0]['msg']}"
        ) from None


def check_key(manifest: Manifest, key: bytes | None, *, where: str) -> bytes | None:
    """The key to read this backup with: None for a plain backup; BackupKeyError when the
    backup is encrypted and the key is missing or another one, or the manifest's MAC fails."""
    enc = manifest.encryption
    if enc is None:
        return None
    if key is None:
        raise BackupKeyError(
            f"{where} is encrypted (key id {enc.key_id}): set CLEARSCAN_BACKUP_KEY to the key "
            "it was made with, or give it with --key-file"
        )
    have = crypto.key_id(key)
    if have != enc.key_id:
        raise BackupKeyError(
            f"wrong key for {where}: it was encrypted with key id {enc.key_id}, the key given "
            f"has id {have}. Give the key it was made with (an earlier CLEARSCAN_BACKUP_KEY, "
            "with --key-file)"
        )
    if manifest.mac is None or manifest.mac != crypto.manifest_mac(key, manifest.body()):
        raise BackupDamaged(f"{where}: manifest.json was altered (its MAC does not match)")
    return key
