"""What can go wrong with a backup, each with the exit code `clearscan backup` ends with."""

from __future__ import annotations

from clearscan.errors import ClearScanError


class BackupError(ClearScanError):
    """A backup could not be made, read or restored (exit code 1)."""

    exit_code = 1
    title = "Backup failed"


class BackupDamaged(BackupError):
    """A file of the backup is missing or does not match its manifest (exit code 3)."""

    exit_code = 3
    title = "Backup damaged"


class TargetNotEmpty(BackupError):
    """Restore refuses a data dir or database that already holds something (exit code 4)."""

    exit_code = 4
    status_code = 409
    title = "Restore target not empty"


class NewerSchema(BackupError):
    """The backup's schema revision is unknown to this code: a newer ClearScan made it
    (exit code 5)."""

    exit_code = 5
    title = "Backup from a newer version"


class BackupKeyError(BackupError):
    """The encryption key is missing, malformed or not the one the backup was made with
    (exit code 6)."""

    exit_code = 6
    title = "Backup key problem"


class RestoreCheckFailed(BackupError):
    """The restore was written but a check afterwards failed (exit code 7)."""

    exit_code = 7
    title = "Restored data failed a check"
