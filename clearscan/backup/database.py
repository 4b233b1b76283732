"""The database side of a backup: a consistent snapshot while the server runs, what it references,
and putting it back.

SQLite: the online backup API copies the database page by page under a read transaction, so
the copy is one consistent state even while the server writes (WAL). PostgreSQL: a REPEATABLE
READ transaction exports its snapshot and `pg_dump -Fc --snapshot` dumps exactly that state;
the same transaction reads the row counts and blob references, so the dump and the list of
blobs agree. Nothing here names a table: tables are read from the database itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, MetaData, create_engine, func, inspect, select, text
from sqlalchemy.engine import URL, make_url

from clearscan.backup.errors import BackupError, RestoreCheckFailed, TargetNotEmpty

_HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
PG_TIMEOUT_S = 6 * 3600


def kind_of(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"backups support SQLite and PostgreSQL, not {backend}")
    return backend


def is_blob_column(name: str) -> bool:
    """Columns that hold a blob address by the schema's naming rule (`sha256`, `blob`,
    `*_sha256`, `*_blob`): a value there that the blob store lacks is a missing blob."""
    n = name.lower()
    return n in ("sha256", "blob") or n.endswith(("_sha256", "_blob"))


@dataclass
class Snapshot:
    """A dump file and what the state it holds references."""

    kind: str
    path: Path
    revision: str | None
    tables: dict[str, int]
    candidates: set[str] = field(default_factory=set)  # every sha256-like value anywhere
    strict: set[str] = field(default_factory=set)  # values of blob columns (must exist)


def scan(conn: Connection, snap: Snapshot) -> None:
    """Row counts of every table, and every 64-hex-digit value in any row (text or JSON): the
    blob references. Other hashes (audit chain, token digests) are among them; the caller keeps
    those the blob store holds."""
    meta = MetaData()
    meta.reflect(bind=conn)
    for table in meta.sorted_tables:
        count = 0
        strict_cols = {c.name for c in table.columns if is_blob_column(c.name)}
        result = conn.execution_options(yield_per=2000).execute(select(table))
        for row in result.mappings():
            count += 1
            for col, value in row.items():
                if not isinstance(value, str | dict | list):
                    continue  # numbers, dates, bytes: no addresses
                found = _hashes(value)
                if not found:
                    continue
                snap.candidates.update(found)
                if col in strict_cols:
                    snap.strict.update(found)
                elif isinstance(value, dict | list):
                    snap.strict.update(_json_blob_values(value))
                elif value.startswith(("{", "[")):
                    snap.strict.update(_json_blob_values(_maybe_json(value)))
        snap.tables[table.name] = count
        if table.name == "alembic_version":
            snap.revision = conn.scalar(text("SELECT version_num FROM alembic_version"))


def _hashes(value: str | dict[str, Any] | list[Any]) -> list[str]:
    if isinstance(value, str):
        return _HEX64.findall(value)
    return _HEX64.findall(json.dumps(value))


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return None


def _json_blob_values(value: Any) -> Iterator[str]:
    """Values under JSON keys named like blob columns (`csv_blob`, `heatmap_sha256`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str) and isinstance(k, str) and is_blob_column(k):
                if _HEX64.fullmatch(v):
                    yield v
            else:
                yield from _json_blob_values(v)
    elif isinstance(value, list):
        for v in value:
            yield from _json_blob_values(v)


# --- snapshot ---------------------------------------------------------------------------------


@contextmanager
def snapshot(url: str, workdir: Path) -> Iterator[Snapshot]:
    """A consistent dump of the database at `url` in `workdir`, scanned."""
    kind = kind_of(url)
    if kind == "sqlite":
        yield _sqlite_snapshot(url, workdir)
    else:
        with _pg_snapshot(url, workdir) as snap:
            yield snap


def sqlite_file(url: str) -> Path | None:
    """The SQLite database file of `url`, None for PostgreSQL."""
    return _sqlite_path(url) if kind_of(url) == "sqlite" else None


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return Path(database)


def _sqlite_snapshot(url: str, workdir: Path) -> Snapshot:
    source = _sqlite_path(url)
    if not source.is_file():
        raise BackupError(f"no database at {source}: nothing to back up")
    dest = workdir / "database.sqlite"
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)  # all pages in one step: one consistent state
    finally:
        dst.close()
        src.close()
    snap = Snapshot(kind="sqlite", path=dest, revision=None, tables={})
    engine = create_engine(f"sqlite:///{dest}")
    try:
        with engine.connect() as conn:
            scan(conn, snap)
    finally:
        engine.dispose()
    return snap


def pg_command_env(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection string for pg_dump / pg_restore, the password in PGPASSWORD (never on
    a command line other users can read)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = URL.create(
        "postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return plain.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not installed: PostgreSQL backups need the PostgreSQL client tools "
            "(Debian/Ubuntu: apt install postgresql-client), of the server's major version or newer"
        )
    return path


@contextmanager
def _pg_snapshot(url: str, workdir: Path) -> Iterator[Snapshot]:
    pg_dump = _tool("pg_dump")
    dest = workdir / "database.pgdump"
    dsn, env = pg_command_env(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot_id = conn.scalar(text("SELECT pg_export_snapshot()"))
                proc = subprocess.run(  # noqa: S603 (fixed argument list, no shell)
                    [pg_dump, "-Fc", f"--snapshot={snapshot_id}", "-f", str(dest), "-d", dsn],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=PG_TIMEOUT_S,
                    check=False,
                )
                if proc.returncode != 0:
                    raise BackupError(f"pg_dump failed: {proc.stderr.strip()[-2000:]}")
                snap = Snapshot(kind="postgresql", path=dest, revision=None, tables={})
                scan(conn, snap)
        yield snap
    finally:
        engine.dispose()


# --- restore ----------------------------------------------------------------------------------


def check_empty(url: str) -> None:
    """TargetNotEmpty unless the database has no tables (a new SQLite file or a freshly created
    PostgreSQL database)."""
    if kind_of(url) == "sqlite":
        path = _sqlite_path(url)
        if path.exists() and path.stat().st_size > 0:
            raise TargetNotEmpty(
                f"the database {path} already exists: restore needs an empty target"
            )
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
    except Exception as exc:
        raise BackupError(
            f"cannot reach the target database: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        engine.dispose()
    if tables:
        raise TargetNotEmpty(
            f"the target database already has {len(tables)} tables ({', '.join(sorted(tables)[:5])}"
            f"{'...' if len(tables) > 5 else ''}): restore needs an empty database. Create a new "
            "one (createdb) or drop this one's contents first"
        )


def restore_dump(kind: str, dump: Path, url: str) -> None:
    """Load a verified dump file into the (empty) target database."""
    if kind != kind_of(url):
        raise BackupError(
            f"this backup holds a {kind} database and the target is {kind_of(url)}: restore a "
            f"{kind} backup into a {kind} database"
        )
    if kind == "sqlite":
        dest = _sqlite_path(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".restoring")
        shutil.copyfile(dump, tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        return
    pg_restore = _tool("pg_restore")
    dsn, env = pg_command_env(url)
    proc = subprocess.run(  # noqa: S603 (fixed argument list, no shell)
        [
            pg_restore,
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            "-d",
            dsn,
            str(dump),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=PG_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise BackupError(
            f"pg_restore failed (nothing was loaded: it runs in one transaction): "
            f"{proc.stderr.strip()[-2000:]}"
        )


def check_dump(kind: str, dump: Path) -> None:
    """A quick look inside a dump: SQLite's integrity check, or pg_restore reading its table of
    contents. BackupError when it cannot be used."""
    if kind == "sqlite":
        problems = sqlite_integrity(dump)
        if problems:
            raise BackupError(f"the database in the backup fails its integrity check: {problems}")
        return
    proc = subprocess.run(  # noqa: S603 (fixed argument list, no shell)
        [_tool("pg_restore"), "--list", str(dump)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise BackupError(f"pg_restore cannot read the dump: {proc.stderr.strip()[-500:]}")


def sqlite_integrity(path: Path) -> str | None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    return None if rows == ["ok"] else "; ".join(rows[:5])


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            meta = MetaData()
            meta.reflect(bind=conn)
            return {
                t.name: int(conn.scalar(select(func.count()).select_from(t)) or 0)
                for t in meta.sorted_tables
            }
    finally:
        engine.dispose()


def compare_counts(expected: dict[str, int], url: str) -> None:
    have = row_counts(url)
    wrong = [
        f"{name}: {have.get(name, 'no table')} rows, the backup had {n}"
        for name, n in sorted(expected.items())
        if have.get(name) != n
    ]
    if wrong:
        raise RestoreCheckFailed("restored tables differ from the backup: " + "; ".join(wrong))


def references(url: str) -> Snapshot:
    """Scan a (restored) database for its blob references."""
    snap = Snapshot(kind=kind_of(url), path=Path(), revision=None, tables={})
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            scan(conn, snap)
    finally:
        engine.dispose()
    return snap
