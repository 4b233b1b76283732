"""What sharing state between API processes costs a request
(`python benchmarks/bench_shared_state.py`).

- the rate-limit check of one prediction (per address and per user, a bearer token), for each
  throttle store: memory (embedded), the database (SQLite, PostgreSQL), Redis;
- re-reading the roll-out state (paid by one request per process every STATE_TTL_S), on SQLite
  and PostgreSQL.

PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) are used when they answer.
Prints medians in microseconds and writes bench-results/shared_state.json."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clearscan.api.ratelimit import RequestThrottle  # noqa: E402
from clearscan.auth.security import create_access_token  # noqa: E402
from clearscan.auth.throttle import (  # noqa: E402
    DatabaseStore,
    MemoryStore,
    RateLimits,
    RedisStore,
    ThrottleStore,
)
from clearscan.config import Settings  # noqa: E402
from clearscan.db import create_db_engine, make_session_factory  # noqa: E402
from clearscan.db.migrate import upgrade  # noqa: E402
from clearscan.registry.catalog import BUNDLED_DIR  # noqa: E402
from clearscan.registry.routing import ModelRegistry  # noqa: E402

SECRET = "bench-secret-key-0123456789-0123456789-abcdef"
PG_ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


def median_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(50, n)):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1e6, 1)


@contextmanager
def pg_url() -> Iterator[str | None]:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception:
        yield None
        return
    name = f"clearscan_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def throttle_check_us(store: ThrottleStore, sessions: object, n: int) -> float:
    """One prediction's check: the address and the user limits, counted (never refused)."""
    limits = RateLimits.from_settings(
        Settings(
            secret_key=SECRET,
            rate_limit_predict_per_user=10**9,
            rate_limit_predict_per_address=10**9,
        ),
        store,
    )
    throttle = RequestThrottle(
        limits, {("POST", "/api/v1/predict"): "predict"}, secret=SECRET, sessions=sessions
    )
    token = create_access_token(secret=SECRET, user_id=7, minutes=60)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/predict",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "client": ("10.0.0.1", 5000),
    }
    loop = asyncio.new_event_loop()
    try:
        return median_us(lambda: loop.run_until_complete(throttle.check(scope)), n)
    finally:
        loop.close()


def rollout_read_us(url: str, n: int) -> float:
    engine = create_db_engine(url)
    registry = ModelRegistry([BUNDLED_DIR], sessions=make_session_factory(engine))
    registry.load_all()  # pins the bundled model: one row in model_state
    try:
        return median_us(lambda: registry._read_state(force=True), n)
    finally:
        engine.dispose()


def main() -> None:
    out: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="clearscan-bench-"))
    sqlite_url = f"sqlite:///{tmp / 'bench.db'}"
    upgrade(sqlite_url)
    sqlite = create_db_engine(sqlite_url)
    sessions = make_session_factory(sqlite)
    out["throttle_memory_us"] = throttle_check_us(MemoryStore(), sessions, 5000)
    out["throttle_sqlite_us"] = throttle_check_us(DatabaseStore(sqlite), sessions, 1000)
    out["rollout_read_sqlite_us"] = rollout_read_us(sqlite_url, 1000)
    with pg_url() as url:
        if url:
            pg = create_db_engine(url)
            out["throttle_postgresql_us"] = throttle_check_us(DatabaseStore(pg), sessions, 1000)
            out["rollout_read_postgresql_us"] = rollout_read_us(url, 1000)
            pg.dispose()
    try:
        store = RedisStore(
            "redis://127.0.0.1:6379/0", prefix=f"clearscan-bench:{uuid.uuid4().hex}:"
        )
        store.client.ping()
        out["throttle_redis_us"] = throttle_check_us(store, sessions, 2000)
        for key in store.client.scan_iter(f"{store.prefix}*"):
            store.client.delete(key)
    except Exception as exc:  # no Redis here
        print(f"redis skipped: {type(exc).__name__}")
    sqlite.dispose()
    print(json.dumps(out, indent=2))
    res = ROOT / "bench-results"
    res.mkdir(exist_ok=True)
    (res / "shared_state.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
