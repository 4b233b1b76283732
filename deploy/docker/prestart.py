"""Container prestart: wait for the database, migrate it and create the first admin.

Run by the image's entrypoint before `serve` and `worker` (and alone as `prestart`):

1. wait until the database answers, for up to CLEARSCAN_DB_WAIT_SECONDS (default 60);
2. `clearscan.bootstrap.initialise`, the start-up step of `clearscan serve`: check the settings
   (production refuses default secrets), create the data dir, check the blob store, apply the
   migrations and create the user `admin` (password from CLEARSCAN_ADMIN_PASSWORD, else a
   generated one printed once). On PostgreSQL this runs under an advisory lock, so replicas
   that start together migrate one after the other instead of racing.

`--wait-only` stops after step 1 (`db upgrade` migrates by itself).
Exit status: 0 ready, 1 the database did not answer in time, 2 the settings are unusable.
"""

from __future__ import annotations

import os
import sys
import time

from sqlalchemy import Engine, text

from clearscan.bootstrap import initialise
from clearscan.config import ConfigError, Settings
from clearscan.db import create_db_engine

# pg_advisory_lock key held while one process migrates and seeds (a fixed 63-bit number)
LOCK_KEY = int.from_bytes(b"clrscan0", "big") >> 1


def log(message: str) -> None:
    print(f"prestart: {message}", file=sys.stderr, flush=True)


def wait_for_database(engine: Engine, timeout_s: float) -> None:
    """Return once `SELECT 1` succeeds; SystemExit(1) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    attempt = 0
    while True:
        attempt += 1
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            if attempt > 1:
                log(f"database answered after {attempt} attempts")
            return
        except Exception as exc:  # any driver error: not there yet
            left = deadline - time.monotonic()
            if left <= 0:
                log(f"database not reachable after {timeout_s:g} s: {type(exc).__name__}: {exc}")
                raise SystemExit(1) from None
            if attempt == 1:
                log(f"waiting for the database ({type(exc).__name__})")
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def initialise_once(settings: Settings, engine: Engine) -> str | None:
    """`initialise(settings)`, under a PostgreSQL advisory lock when the database is one."""
    if engine.dialect.name != "postgresql":
        return initialise(settings)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        try:
            return initialise(settings)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})


def main(argv: list[str]) -> int:
    wait_only = "--wait-only" in argv[1:]
    try:
        timeout_s = float(os.environ.get("CLEARSCAN_DB_WAIT_SECONDS", "60"))
        settings = Settings()
        engine = create_db_engine(settings.sqlalchemy_url)
    except (ConfigError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        log(f"invalid settings: {exc}")
        return 2
    try:
        wait_for_database(engine, timeout_s)
        if wait_only:
            return 0
        try:
            generated = initialise_once(settings, engine)
        except ConfigError as exc:
            log(str(exc))
            return 2
    finally:
        engine.dispose()
    if generated:
        log(
            f"created user admin with password {generated} (shown only this once; set "
            "CLEARSCAN_ADMIN_PASSWORD or CLEARSCAN_ADMIN_PASSWORD_FILE to choose it)"
        )
    log(f"database ready at the latest revision ({engine.dialect.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
