"""Create, verify, list, prune and restore backups.

A backup is one folder (or S3 prefix) holding `manifest.json`, the database dump
(`database/database.sqlite` or `database/database.pgdump`), every blob the database references
(`blobs/ab/cd/<sha256>`, each once) and the model store's files (`models/<name>/<version>/...`).
Restore reads every file through and checks it against the manifest before it writes anything,
then loads the dump, copies the blobs and models, runs the migrations and checks the result."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import make_url

from clearscan import __version__
from clearscan.backup import database, files
from clearscan.backup import manifest as mf
from clearscan.backup.errors import (
    BackupDamaged,
    BackupError,
    NewerSchema,
    RestoreCheckFailed,
    TargetNotEmpty,
)
from clearscan.backup.manifest import DatabaseEntry, Encryption, FileEntry, Manifest
from clearscan.backup.target import Location
from clearscan.storage import BlobError, BlobStore

log = logging.getLogger(__name__)
COPY_THREADS = 4
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def new_name(now: datetime | None = None, slot: datetime | None = None) -> str:
    """Names sort by time: `clearscan-20261201T040000Z-<random>`, or `...-scheduled` for the
    backup of a schedule slot (one name per slot, whoever runs it)."""
    if slot is not None:
        return f"clearscan-{slot.astimezone(UTC):%Y%m%dT%H%M%SZ}-scheduled"
    now = now or datetime.now(UTC)
    return f"clearscan-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _time_of(name: str) -> datetime | None:
    try:
        return datetime.strptime(name.split("-")[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (IndexError, ValueError):
        return None


# --- create -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """What a backup copies: the database, the blob store and the model store's folder."""

    database_url: str
    blobs: BlobStore
    models_root: Path | None
    data_dir: Path  # its key files go into encrypted backups; snapshots are made in it


def create(
    sources: Sources,
    location: Location,
    *,
    key: bytes | None = None,
    slot: datetime | None = None,
    progress: Progress = _quiet,
) -> Manifest:
    """Make a backup at `location`; returns its manifest. Blobs the database names in a blob
    column but the store lacks are listed in the manifest's `missing_blobs` (the backup is still
    made: it is the best copy there is)."""
    name = new_name(slot=slot)
    if not sources.data_dir.is_dir():
        raise BackupError(f"no data dir at {sources.data_dir}: nothing to back up")
    work = Path(tempfile.mkdtemp(prefix=".backup-", dir=sources.data_dir))
    try:
        manifest = _create(sources, location, name, key, slot, work, progress)
    except BaseException:
        location.delete(name, partial=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _create(
    sources: Sources,
    location: Location,
    name: str,
    key: bytes | None,
    slot: datetime | None,
    work: Path,
    progress: Progress,
) -> Manifest:
    started = datetime.now(UTC)
    # copied before the snapshot: what they record (audit anchors) is then never ahead of it
    extra: list[FileEntry] = []
    for rel, path in files.data_files(sources.data_dir, database.sqlite_file(sources.database_url)):
        with path.open("rb") as src:
            extra.append(files.put(location, name, f"data/{rel}", src, key))
    with database.snapshot(sources.database_url, work) as snap:
        progress(
            f"database snapshot: {sum(snap.tables.values())} rows in {len(snap.tables)} tables"
        )
        with snap.path.open("rb") as src:
            db_file = files.put(location, name, f"database/{snap.path.name}", src, key)
    held = files.stored_digests(sources.blobs)
    if held is None:
        wanted = {d for d in snap.candidates if sources.blobs.exists(d)}
    else:
        wanted = snap.candidates & held
    missing = set(snap.strict) - wanted
    progress(f"copying {len(wanted)} blobs")

    def copy(digest: str) -> FileEntry | None:
        try:
            with sources.blobs.open(digest) as src:
                entry = files.put(location, name, files.blob_path(digest), src, key)
        except BlobError as exc:
            log.error("backup: blob %s not copied: %s", digest, exc)
            return None
        if entry.sha256 != digest:
            log.error("backup: blob %s is damaged in the blob store; not copied", digest)
            return None
        return entry

    blobs: list[FileEntry] = []
    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="backup-copy") as pool:
        for digest, entry in zip(sorted(wanted), pool.map(copy, sorted(wanted)), strict=True):
            if entry is None:
                missing.add(digest)
            else:
                blobs.append(entry)
    models: list[FileEntry] = []
    for rel, path in files.model_files(sources.models_root):
        with path.open("rb") as src:
            models.append(files.put(location, name, f"models/{rel}", src, key))
    progress(f"copied {len(models)} model files")
    keys: list[FileEntry] = []
    if key is not None:  # secrets travel only sealed
        for rel, path in files.key_files(sources.data_dir):
            with path.open("rb") as src:
                keys.append(files.put(location, name, f"keys/{rel}", src, key))
    manifest = Manifest(
        name=name,
        created_at=started,
        app_version=__version__,
        alembic_revision=snap.revision,
        database=DatabaseEntry(**db_file.model_dump(), kind=snap.kind, tables=snap.tables),
        blob_source=getattr(sources.blobs, "location", None) or sources.blobs.backend,
        blobs=blobs,
        models=models,
        keys=keys,
        data_files=extra,
        missing_blobs=sorted(missing),
        encryption=Encryption(key_id=_key_id(key)) if key is not None else None,
        slot=slot.astimezone(UTC).isoformat() if slot is not None else None,
    )
    location.commit(name, manifest.dump(key))
    return manifest


def _key_id(key: bytes) -> str:
    from clearscan.backup.crypto import key_id

    return key_id(key)


# --- verify -----------------------------------------------------------------------------------


def open_manifest(
    location: Location, name: str, key: bytes | None
) -> tuple[Manifest, bytes | None]:
    where = f"{location.url.rstrip('/')}/{name}"
    manifest = mf.load(location.read_manifest(name), where=where)
    return manifest, mf.check_key(manifest, key, where=where)


def verify(
    location: Location, name: str, *, key: bytes | None = None, progress: Progress = _quiet
) -> Manifest:
    """Read every file of the backup through and check it against the manifest, and the
    database dump inside; BackupDamaged listing every file that fails."""
    manifest, key = open_manifest(location, name, key)
    with tempfile.TemporaryDirectory(prefix="clearscan-verify-") as tmp:
        _verify_files(location, manifest, key, Path(tmp), progress)
    return manifest


def _verify_files(
    location: Location, manifest: Manifest, key: bytes | None, tmp: Path, progress: Progress
) -> Path:
    """Check every file; return the database dump's verified copy in `tmp`."""
    dump = tmp / Path(manifest.database.path).name
    with dump.open("wb") as sink:
        problem = files.read_checked(location, manifest.name, manifest.database, key, sink)
    problems = [problem] if problem else []
    others = [*manifest.blobs, *manifest.models]
    progress(f"checking {len(others) + 1} files")
    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="backup-verify") as pool:
        found = pool.map(lambda e: files.read_checked(location, manifest.name, e, key), others)
        problems += [p for p in found if p]
    if not problem:
        try:
            database.check_dump(manifest.database.kind, dump)
        except BackupError as exc:
            problems.append(f"{manifest.database.path}: {exc.detail}")
    if problems:
        shown = "; ".join(problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise BackupDamaged(
            f"backup {manifest.name} is damaged: {len(problems)} of {len(others) + 1} files "
            f"fail their check: {shown}{more}"
        )
    return dump


# --- list and prune ---------------------------------------------------------------------------


@dataclass
class Listed:
    name: str
    manifest: Manifest | None  # None when unreadable
    problem: str | None = None


def list_backups(location: Location) -> list[Listed]:
    out = []
    for name in location.names():
        try:
            out.append(Listed(name, mf.load(location.read_manifest(name), where=name)))
        except BackupError as exc:
            out.append(Listed(name, None, exc.detail))
    return out


PARTIAL_GRACE = timedelta(days=1)


def prune(
    location: Location, *, keep: int, max_age_days: float, now: datetime | None = None
) -> list[str]:
    """Delete backups beyond the newest `keep` (0: no count limit) and those older than
    `max_age_days` (0: no age limit); the newest complete backup is never deleted. Backups
    begun more than a day ago and never finished go too. Returns the names deleted."""
    now = now or datetime.now(UTC)
    names = sorted(location.names(), key=lambda n: (_time_of(n) or now, n), reverse=True)
    doomed = []
    for i, name in enumerate(names):
        if i == 0:
            continue
        made = _time_of(name)
        if (keep and i >= keep) or (
            max_age_days and made is not None and now - made > timedelta(days=max_age_days)
        ):
            doomed.append(name)
    for name in doomed:
        location.delete(name)
    for name in location.partial_names():
        made = _time_of(name)
        if made is not None and now - made > PARTIAL_GRACE:
            location.delete(name, partial=True)
            doomed.append(name)
    return doomed


# --- restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a restore writes: an empty data dir, the database (inside it for SQLite), the blob
    store (opened only once every file checked out) and the model store's folder."""

    data_dir: Path
    database_url: str
    open_blobs: Callable[[], BlobStore]
    models_root: Path
    # registers the audit key for the restored database (after the backup's key files are in
    # place) so that its chain can be checked; anchors are not compared: a restored backup is
    # older than the anchors written since, by design
    audit_keys: Callable[[], object] | None = None


@dataclass
class RestoreReport:
    manifest: Manifest
    tables: int = 0
    rows: int = 0
    blobs_checked: int = 0
    models_checked: int = 0
    audit_events: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def check_target_empty(data_dir: Path) -> None:
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise TargetNotEmpty(
            f"{data_dir} is not empty: restore writes only into an empty or new folder, so it "
            "never mixes a backup with live data. Give a new folder with --into"
        )


def check_revision(manifest: Manifest) -> None:
    """NewerSchema when this code's migrations do not know the backup's revision."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    from clearscan.db.migrate import alembic_config

    rev = manifest.alembic_revision
    if rev is None:
        raise BackupDamaged(f"backup {manifest.name} names no schema revision")
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        known = script.get_revision(rev) is not None
    except CommandError:
        known = False
    if not known:
        raise NewerSchema(
            f"backup {manifest.name} was made by ClearScan {manifest.app_version} with database "
            f"schema revision {rev}, which this version ({__version__}) does not know: restore "
            f"it with ClearScan {manifest.app_version} or newer"
        )


def restore(
    location: Location,
    name: str,
    target: Target,
    *,
    key: bytes | None = None,
    progress: Progress = _quiet,
) -> RestoreReport:
    started = time.monotonic()
    check_target_empty(target.data_dir)
    manifest, key = open_manifest(location, name, key)
    check_revision(manifest)
    if manifest.database.kind != database.kind_of(target.database_url):
        raise BackupError(
            f"backup {name} holds a {manifest.database.kind} database; the target is "
            f"{database.kind_of(target.database_url)}. Restore it into a "
            f"{manifest.database.kind} database"
            + (" (--database-url)" if manifest.database.kind == "postgresql" else "")
        )
    database.check_empty(target.database_url)
    parent = target.data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clearscan-restore-", dir=parent) as tmp:
        dump = _verify_files(location, manifest, key, Path(tmp), progress)
        progress("every file matches the manifest; writing")
        try:
            report = _write(location, manifest, key, target, dump, Path(tmp), progress)
        except RestoreCheckFailed:
            raise
        except BaseException as exc:
            if isinstance(exc, BackupError):
                exc.detail += (
                    f". The target is partly written: empty {target.data_dir} (and the target "
                    "database) before trying again"
                )
            raise
    report.seconds = time.monotonic() - started
    return report


def _write(
    location: Location,
    manifest: Manifest,
    key: bytes | None,
    target: Target,
    dump: Path,
    tmp: Path,
    progress: Progress,
) -> RestoreReport:
    from clearscan.db.migrate import upgrade

    report = RestoreReport(manifest)
    target.data_dir.mkdir(parents=True, exist_ok=True)
    database.restore_dump(manifest.database.kind, dump, target.database_url)
    database.compare_counts(manifest.database.tables, target.database_url)
    report.tables = len(manifest.database.tables)
    report.rows = sum(manifest.database.tables.values())
    progress(f"database loaded: {report.rows} rows in {report.tables} tables")
    blobs = target.open_blobs()

    def put(entry: FileEntry) -> str | None:
        if blobs.exists(entry.sha256):
            return None  # content-addressed: checked with the rest below
        fd, part = tempfile.mkstemp(dir=tmp, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as sink:
                problem = files.read_checked(location, manifest.name, entry, key, sink)
            if problem:
                return problem
            digest = blobs.put_file(Path(part))
            return None if digest == entry.sha256 else f"{entry.path}: stored as {digest}"
        finally:
            Path(part).unlink(missing_ok=True)

    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="restore-copy") as pool:
        problems = [p for p in pool.map(put, manifest.blobs) if p]
    if problems:
        raise BackupDamaged("blobs changed while restoring: " + "; ".join(problems[:20]))
    progress(f"{len(manifest.blobs)} blobs in place")
    for entry in manifest.models:
        dest = target.models_root / entry.path.removeprefix("models/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as sink:
            problem = files.read_checked(location, manifest.name, entry, key, sink)
        if problem:
            raise BackupDamaged(f"model file changed while restoring: {problem}")
        dest.chmod(0o444)
    for entry in [*manifest.keys, *manifest.data_files]:
        dest = target.data_dir / entry.path.split("/", 1)[1]
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as sink:
            problem = files.read_checked(location, manifest.name, entry, key, sink)
        if problem:
            raise BackupDamaged(f"file changed while restoring: {problem}")
    upgrade(target.database_url)
    progress("migrations applied")
    if target.audit_keys is not None:
        target.audit_keys()
    _check(manifest, target, blobs, report)
    return report


def _check(manifest: Manifest, target: Target, blobs: BlobStore, report: RestoreReport) -> None:
    """After restore: the database's own integrity check, the audit chain, and every blob the
    database references and every model file present with its sha256."""
    from clearscan.audit.service import verify_chain
    from clearscan.db import create_db_engine, make_session_factory

    failures: list[str] = []
    if manifest.database.kind == "sqlite":
        problem = database.sqlite_integrity(Path(str(make_url(target.database_url).database)))
        if problem:
            failures.append(f"SQLite integrity check: {problem}")
    engine = create_db_engine(target.database_url)
    try:
        with make_session_factory(engine)() as db:
            chain = verify_chain(db=db, compare_anchors=False)
    finally:
        engine.dispose()
    report.audit_events = chain.checked
    if not chain.ok:
        failures.append(
            f"the audit chain does not verify: {chain.reason} at event {chain.first_bad_seq}"
        )
    refs = database.references(target.database_url)
    known_missing = set(manifest.missing_blobs)
    wanted = ({b.sha256 for b in manifest.blobs} | refs.strict) - known_missing
    bad = []
    for digest in sorted(wanted):
        try:
            with blobs.open(digest) as f:
                _, got = files.hash_stream(f)
        except BlobError:
            bad.append(f"{digest} missing")
            continue
        if got != digest:
            bad.append(f"{digest} damaged")
    report.blobs_checked = len(wanted)
    if bad:
        failures.append(f"{len(bad)} blobs fail: {'; '.join(bad[:20])}")
    still = sorted(known_missing & refs.strict)
    if still:
        report.warnings.append(
            f"{len(still)} blobs the database references were already missing when the backup "
            f"was made: {', '.join(still[:10])}"
        )
    for entry in manifest.models:
        path = target.models_root / entry.path.removeprefix("models/")
        with path.open("rb") as f:
            size, got = files.hash_stream(f)
        if (size, got) != (entry.size, entry.sha256):
            failures.append(f"model file {entry.path} differs after restore")
    report.models_checked = len(manifest.models)
    if failures:
        raise RestoreCheckFailed("restored, but checks failed: " + "; ".join(failures))
