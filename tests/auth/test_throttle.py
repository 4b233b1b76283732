"""The throttle stores under one contract: memory, the database (SQLite and the real PostgreSQL
server) and Redis (127.0.0.1:6379). Request rates (GCRA), failed logins (back-off per pair) and
remembered pairs, counts shared between two store objects as between two processes, atomic
under concurrent takes, and a store that is down lets requests through."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from clearscan.auth.throttle import (
    MAX_KEY,
    DatabaseStore,
    LoginLimiter,
    MemoryStore,
    RateLimits,
    RedisStore,
    Take,
    ThrottleStore,
    ThrottleUnavailable,
    open_store,
    redis_url,
    store_key,
)
from clearscan.config import ConfigError, Settings
from clearscan.db import create_db_engine
from clearscan.db.migrate import upgrade
from tests.conftest import pg_available, pg_database

REDIS_URL = "redis://127.0.0.1:6379/0"

StoreFactory = Callable[[], ThrottleStore]
"""Each call is another store object on the same counts (another process's view)."""


def take(store: ThrottleStore, key: str, *, limit: int, period_s: float) -> float:
    """One take: 0.0 when allowed (and counted), else the wait."""
    refusal = store.take([Take(key, limit, period_s)])
    return 0.0 if refusal is None else refusal.wait


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    base = Settings(data_dir=tmp_path_factory.mktemp("pg"), secret_key="x" * 40)
    with pg_database(base) as pg:
        upgrade(pg.sqlalchemy_url)
        yield pg.sqlalchemy_url


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
def stores(request, tmp_path) -> Iterator[StoreFactory]:
    kind = request.param
    if kind == "memory":
        one = MemoryStore()
        yield lambda: one  # one process: every view is the same object
        return
    if kind == "redis":
        if not redis_available():
            pytest.fail("Redis is not reachable on 127.0.0.1:6379 (the test machine runs it)")
        prefix = f"clearscan-test:{uuid.uuid4().hex[:8]}:"
        made: list[RedisStore] = []

        def redis_store() -> ThrottleStore:
            made.append(RedisStore(REDIS_URL, prefix=prefix))
            return made[-1]

        yield redis_store
        for key in made[0].client.scan_iter(f"{prefix}*") if made else ():
            made[0].client.delete(key)
        return
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'throttle.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("pg_url")
    engines: list[Engine] = []

    def db_store() -> ThrottleStore:
        engines.append(create_db_engine(url))
        return DatabaseStore(engines[-1])

    yield db_store
    if kind == "postgresql":  # the module's database: leave it empty for the next test
        from sqlalchemy import text

        with engines[0].begin() as conn:
            conn.execute(text("DELETE FROM rate_limits"))
            conn.execute(text("DELETE FROM login_failures"))
    for e in engines:
        e.dispose()


def test_take_allows_a_burst_then_an_even_rate(stores: StoreFactory):
    store = stores()
    assert [take(store, "k", limit=3, period_s=60) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = take(store, "k", limit=3, period_s=60)  # refused: one more every 20 s
    assert 19.0 < wait <= 20.0
    assert take(store, "other", limit=3, period_s=60) == 0.0  # keys are independent
    assert take(store, "k", limit=3, period_s=60) == pytest.approx(wait, abs=1.0)  # not counted


def test_take_recovers_after_the_interval(stores: StoreFactory):
    store = stores()
    assert take(store, "fast", limit=2, period_s=0.6) == 0.0
    assert take(store, "fast", limit=2, period_s=0.6) == 0.0
    wait = take(store, "fast", limit=2, period_s=0.6)
    assert 0.0 < wait <= 0.3
    time.sleep(wait + 0.05)
    assert take(store, "fast", limit=2, period_s=0.6) == 0.0
    assert take(store, "fast", limit=2, period_s=0.6) > 0.0


def test_a_request_takes_all_its_limits_or_none(stores: StoreFactory):
    store = stores()
    both = [Take("addr", 10, 60), Take("user", 1, 60)]
    assert store.take(both) is None  # counted against both
    refusal = store.take(both)  # the user's limit refuses: the address is not charged
    assert refusal is not None and refusal.index == 1 and 59 < refusal.wait <= 60
    for _ in range(9):
        assert store.take([Take("addr", 10, 60)]) is None
    refusal = store.take([Take("addr", 10, 60), Take("user2", 5, 60)])
    assert refusal is not None and refusal.index == 0 and 5 < refusal.wait <= 6
    assert store.take([Take("user2", 5, 60)]) is None  # user2 was not charged either
    refusal = store.take([Take("addr", 10, 60), Take("user", 1, 60)])
    assert refusal is not None and refusal.index == 1  # the longer wait of the two


def test_two_views_share_the_counts(stores: StoreFactory):
    a, b = stores(), stores()
    assert take(a, "shared", limit=2, period_s=60) == 0.0
    assert take(b, "shared", limit=2, period_s=60) == 0.0
    assert take(a, "shared", limit=2, period_s=60) > 0.0
    assert take(b, "shared", limit=2, period_s=60) > 0.0
    a.add_failure(["ip:10.0.0.9", "user:eve"], at=time.time(), keep_s=60)
    b.add_failure(["user:eve"], at=time.time(), keep_s=60)
    seen = b.failures(["ip:10.0.0.9", "user:eve", "user:nobody"], since=time.time() - 60)
    assert [len(seen[k]) for k in ("ip:10.0.0.9", "user:eve", "user:nobody")] == [1, 2, 0]
    a.clear(["user:eve"])
    assert b.failures(["user:eve"], since=0)["user:eve"] == []
    assert len(b.failures(["ip:10.0.0.9"], since=0)["ip:10.0.0.9"]) == 1


def test_concurrent_takes_never_exceed_the_limit(stores: StoreFactory):
    views = [stores() for _ in range(4)]
    allowed: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(len(views))

    def hammer(store: ThrottleStore) -> None:
        start.wait(timeout=10)
        for _ in range(10):
            ok = take(store, "race", limit=15, period_s=600) == 0.0
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=hammer, args=(v,)) for v in views]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(allowed) == 40 and allowed.count(True) == 15


def test_failures_keep_their_times_in_order(stores: StoreFactory):
    store = stores()
    now = time.time()
    for dt in (30, 20, 10):
        store.add_failure(["user:zed"], at=now - dt, keep_s=3600)
    times = store.failures(["user:zed"], since=now - 25)["user:zed"]
    assert times == pytest.approx([now - 20, now - 10], abs=1e-3)


def test_login_limiter_backs_off_per_pair_across_processes(stores: StoreFactory):
    a = LoginLimiter(max_failures=2, window_seconds=60, secret="k" * 32, store=stores())
    b = LoginLimiter(max_failures=2, window_seconds=60, secret="k" * 32, store=stores())
    pair = a.pair("Mallory", "10.1.1.1")
    assert pair == b.pair("mallory", "10.1.1.1") and "mallory" not in pair  # a keyed hash
    a.failed(pair)
    assert b.wait(pair) == 0
    b.failed(pair)
    assert 0.5 < a.wait(pair) <= 1.0  # the other process's failures count: 1 s back-off
    b.failed(pair)
    assert 1.5 < a.wait(pair) <= 2.0  # then 2 s
    assert a.wait(a.pair("mallory", "10.2.2.2")) == 0  # another address is not slowed
    assert not a.known(pair)
    b.succeeded(pair)  # a success clears the failures and remembers the pair
    assert a.wait(pair) == 0 and a.known(pair) and not a.known(a.pair("mallory", "10.2.2.2"))
    for _ in range(3):
        a.failed(pair)
    b.succeeded(pair, keep_failures=True)  # let in as a known pair: the failures stay
    assert a.wait(pair) > 0


def test_known_pairs_expire(stores: StoreFactory):
    store = stores()
    now = time.time()
    store.remember("pair:old", until=now + 0.2)
    store.remember("pair:new", until=now + 60)
    assert store.known("pair:old", now=now) and store.known("pair:new", now=now)
    time.sleep(0.3)
    assert not store.known("pair:old", now=time.time()) and store.known("pair:new", now=now)
    assert not store.known("pair:never", now=now)


def test_rate_limits_name_what_they_refuse(stores: StoreFactory):
    limits = RateLimits.from_settings(
        Settings(
            secret_key="x" * 40,
            rate_limit_predict_per_user=1,
            rate_limit_predict_per_address=0,  # off
        ),
        stores(),
    )
    assert limits.check([("predict:address", "10.0.0.1"), ("predict:user", "7")]) is None
    refusal = limits.check([("predict:address", "10.0.0.1"), ("predict:user", "7")])
    assert refusal is not None and refusal.status_code == 429
    assert 59 <= refusal.retry_after <= 60 and refusal.headers == {"Retry-After": "60"}
    assert refusal.detail == "too many predictions; try again in 60 s"
    assert limits.check([("predict:user", "8")]) is None


def test_long_keys_are_hashed_to_the_column_width(stores: StoreFactory):
    store = stores()
    long_a, long_b = "user:" + "a" * 300, "user:" + "a" * 299 + "b"
    assert len(store_key(long_a)) <= MAX_KEY and store_key(long_a) != store_key(long_b)
    assert take(store, long_a, limit=1, period_s=60) == 0.0
    assert take(store, long_b, limit=1, period_s=60) == 0.0
    assert take(store, long_a, limit=1, period_s=60) > 0.0
    store.add_failure([long_a], at=time.time(), keep_s=60)
    assert len(store.failures([long_a, long_b], since=0)[long_a]) == 1


def test_an_unreachable_store_lets_requests_through(caplog, tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")  # no tables
    store = DatabaseStore(engine)
    with pytest.raises(ThrottleUnavailable):
        take(store, "k", limit=1, period_s=60)
    limits = RateLimits.from_settings(Settings(secret_key="x" * 40), store)
    limiter = LoginLimiter(max_failures=1, window_seconds=60, store=store)
    with caplog.at_level("ERROR", logger="clearscan.auth.throttle"):
        assert limits.check([("login:address", "10.0.0.1")]) is None
        limiter.failed("pair:x")
        assert limiter.wait("pair:x") == 0 and not limiter.known("pair:x")
    assert sum("throttle store database unavailable" in r.message for r in caplog.records) == 2
    if redis_available():  # a Redis that does not answer: the same
        down = RedisStore("redis://127.0.0.1:1/0")
        assert (
            RateLimits.from_settings(Settings(secret_key="x" * 40), down).check(
                [("login:address", "10.0.0.1")]
            )
            is None
        )
    engine.dispose()


def test_open_store_picks_the_backend(tmp_path):
    sqlite = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    pg = create_db_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    base = Settings(data_dir=tmp_path, secret_key="x" * 40)
    try:
        assert isinstance(open_store(base, sqlite), MemoryStore)  # one SQLite process
        assert isinstance(open_store(base, pg), DatabaseStore)
        forced = base.model_copy(update={"rate_limit_store": "database"})
        assert isinstance(open_store(forced, sqlite), DatabaseStore)
        with_redis = base.model_copy(update={"redis_url": REDIS_URL})
        assert isinstance(open_store(with_redis, pg), RedisStore)
        via_broker = base.model_copy(update={"broker_url": "redis://broker:6379/1"})
        assert redis_url(via_broker) == "redis://broker:6379/1"
        amqp = base.model_copy(update={"broker_url": "amqp://guest@rabbit//"})
        assert redis_url(amqp) is None and isinstance(open_store(amqp, pg), DatabaseStore)
        with pytest.raises(ConfigError, match="CLEARSCAN_REDIS_URL"):
            open_store(base.model_copy(update={"rate_limit_store": "redis"}), sqlite)
    finally:
        sqlite.dispose()
        pg.dispose()
