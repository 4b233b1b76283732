"""The backup settings (CLEARSCAN_BACKUP_*) turned into what the backup code takes."""

from __future__ import annotations

from clearscan.backup import crypto
from clearscan.backup.target import Location, S3Options, parse_location
from clearscan.config import Settings


def s3_options(settings: Settings) -> S3Options:
    secret = settings.s3_secret_access_key
    return S3Options(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
    )


def destination(settings: Settings, where: str | None = None) -> Location:
    """`where`, else CLEARSCAN_BACKUP_TO, else <data dir>/backups."""
    chosen = where or settings.backup_to or str(settings.data_dir / "backups")
    return parse_location(chosen, s3_options(settings))


def key(settings: Settings) -> bytes | None:
    """CLEARSCAN_BACKUP_KEY as bytes (BackupKeyError when malformed), or None."""
    if settings.backup_key is None or not settings.backup_key.get_secret_value().strip():
        return None
    return crypto.parse_key(settings.backup_key.get_secret_value())
