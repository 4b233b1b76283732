"""Login throttling and request rate limits, counted where every API process sees the same
numbers: in this process's memory (embedded: one process), in the database (PostgreSQL) or in
Redis. :func:`open_store` picks the store from the settings.

Two counts, two algorithms:

- failed logins, per (username, client address) pair: after N failures within W seconds each
  further attempt waits 1 s, 2 s, 4 s ... after the last failure (exponential back-off, capped);
  a successful login clears the pair's failures and remembers the pair for a while, and the
  right password from a remembered pair is never refused. Failures are rare events, so each
  is kept with its time. Pairs are stored as keyed hashes: neither the typed username (which
  may be anything, a patient identifier typed into the wrong field) nor the address is kept.
- request rates (predictions, login attempts), per user and per address: the generic cell rate
  algorithm (GCRA), one number per key: a burst of N, then N per minute evenly. A request's
  limits are counted together, all or nothing (one transaction, one Redis script): a refused
  request uses up none of them.

A store that cannot be reached does not stop the service: the check lets the request through
and logs an error (at most once a minute).

Why one module: the three stores implement one contract, side by side so that a change to it is
made to all three at once, and the login limiter and the rate limits are that contract's only
users, sharing its guard for an unreachable store."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine, case, delete, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from clearscan.auth.models import KnownLoginAddress, LoginFailure, RateLimitState
from clearscan.config import ConfigError, Settings
from clearscan.errors import ClearScanError

if TYPE_CHECKING:
    from sqlalchemy.sql.dml import Insert

__all__ = [
    "DatabaseStore",
    "Limit",
    "LoginLimiter",
    "MemoryStore",
    "RateLimited",
    "RateLimits",
    "RedisStore",
    "Refusal",
    "Take",
    "ThrottleStore",
    "ThrottleUnavailable",
    "open_store",
]

log = logging.getLogger(__name__)
MAX_KEY = 128  # the key column's width; longer keys are hashed
CLEANUP_EVERY_S = 60.0


class ThrottleUnavailable(Exception):
    """The store could not be reached (the check then lets the request through)."""


class RateLimited(ClearScanError):
    """Too many requests from this user or address (429, with Retry-After)."""

    status_code = 429
    title = "Too many requests"

    def __init__(self, retry_after: float, what: str) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(f"too many {what}; try again in {seconds} s")
        self.retry_after = seconds
        self.headers = {"Retry-After": str(seconds)}


def store_key(key: str) -> str:
    """`key` as stored: unchanged when short enough, else its prefix and a hash."""
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"{key[: MAX_KEY - 41]}#{digest}"


@dataclass(frozen=True)
class Take:
    """One event of `key`, against `limit` events per `period_s`."""

    key: str
    limit: int
    period_s: float


@dataclass(frozen=True)
class Refusal:
    """Which take of a request was refused (its index) and the seconds until it would not be."""

    index: int
    wait: float


class ThrottleStore(Protocol):
    backend: str

    def take(self, takes: Sequence[Take]) -> Refusal | None:
        """Count one event against each take (GCRA), all or nothing: None when every one
        allows it (all counted); otherwise the refusal with the longest wait, and nothing is
        counted."""
        ...

    def failures(self, keys: Iterable[str], *, since: float) -> dict[str, list[float]]:
        """The failure times of each key after `since` (Unix time), oldest first."""
        ...

    def add_failure(self, keys: Iterable[str], *, at: float, keep_s: float) -> None:
        """Record one failure at `at` for each key; failures older than `keep_s` may go."""
        ...

    def clear(self, keys: Iterable[str]) -> None:
        """Forget the failures of these keys (a successful login)."""
        ...

    def remember(self, key: str, *, until: float) -> None:
        """Mark `key` known until `until` (Unix time)."""
        ...

    def known(self, key: str, *, now: float) -> bool:
        """Whether `key` is marked known at `now`."""
        ...


def _refusal(waits: Sequence[float]) -> Refusal | None:
    """The refusal among these waits (the longest), or None when all are 0."""
    if not any(w > 0 for w in waits):
        return None
    index = max(range(len(waits)), key=lambda i: waits[i])
    return Refusal(index, waits[index])


def _gcra(tat: float | None, now: float, limit: int, period_s: float) -> tuple[float, float]:
    """(new theoretical arrival time, wait): wait 0.0 means allowed."""
    interval = period_s / limit
    tau = period_s - interval  # burst tolerance: `limit` events at once
    tat = now if tat is None or tat < now else tat
    if tat - now > tau:
        return tat, tat - tau - now
    return tat + interval, 0.0


class MemoryStore:
    """Counts in this process (one serving process: the embedded SQLite mode, tests)."""

    backend = "memory"
    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._fails: dict[str, deque[float]] = {}
        self._known: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, takes: Sequence[Take]) -> Refusal | None:
        now = time.time()
        with self._lock:
            results = [_gcra(self._tat.get(t.key), now, t.limit, t.period_s) for t in takes]
            refusal = _refusal([wait for _, wait in results])
            if refusal is None:
                for t, (tat, _) in zip(takes, results, strict=True):
                    self._tat[t.key] = tat
                if len(self._tat) > self.MAX_KEYS:  # bound memory under a spray of addresses
                    self._tat = {k: t for k, t in self._tat.items() if t > now}
            return refusal

    def failures(self, keys: Iterable[str], *, since: float) -> dict[str, list[float]]:
        with self._lock:
            out = {}
            for key in keys:
                q = self._fails.get(key)
                while q and q[0] <= since:
                    q.popleft()
                out[key] = list(q or ())
            return out

    def add_failure(self, keys: Iterable[str], *, at: float, keep_s: float) -> None:
        with self._lock:
            for key in keys:
                self._fails.setdefault(key, deque()).append(at)
            if len(self._fails) > self.MAX_KEYS:  # bound memory under a spray of usernames
                cut = at - keep_s
                self._fails = {k: q for k, q in self._fails.items() if q and q[-1] > cut}

    def clear(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._fails.pop(key, None)

    def remember(self, key: str, *, until: float) -> None:
        with self._lock:
            self._known[key] = until
            if len(self._known) > self.MAX_KEYS:
                now = time.time()
                self._known = {k: u for k, u in self._known.items() if u > now}

    def known(self, key: str, *, now: float) -> bool:
        with self._lock:
            return self._known.get(key, 0.0) > now


class DatabaseStore:
    """Counts in the `rate_limits` and `login_failures` tables: every process using the same
    database shares them. A request's check is one short transaction of its own (an upsert per
    limit), committed without waiting for the disk on PostgreSQL: a crash may forget the last
    counts, which a rate limit can afford."""

    backend = "database"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        self._postgres = dialect == "postgresql"
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            self._insert: Any = pg_insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            self._insert = sqlite_insert
        else:
            raise ConfigError(
                f"the database throttle store needs PostgreSQL or SQLite, not {dialect}"
            )
        self._cleaned_at = time.monotonic()
        self._keep_failures_s = 3600.0

    def _upsert(self, key: str, now: float, limit: int, period_s: float) -> Insert:
        interval = period_s / limit
        tau = period_s - interval
        t = RateLimitState.__table__.c
        stmt = self._insert(RateLimitState).values(key=key, tat=now + interval)
        return stmt.on_conflict_do_update(
            index_elements=[t.key],
            set_={"tat": case((t.tat > now, t.tat), else_=now) + interval},
            where=t.tat <= now + tau,
        ).returning(t.tat)

    def take(self, takes: Sequence[Take]) -> Refusal | None:
        """One transaction: an upsert per take (row-locked until the end, so two processes
        count one after the other), rolled back when any take is refused."""
        now = time.time()
        waits = [0.0] * len(takes)
        try:
            with self.engine.connect() as conn, conn.begin() as tx:
                if self._postgres:  # a count lost in a crash does not matter: skip the flush
                    conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                # rows are locked in key order, the same in every process: no deadlock
                for i in sorted(range(len(takes)), key=lambda i: takes[i].key):
                    t, key = takes[i], store_key(takes[i].key)
                    if conn.execute(self._upsert(key, now, t.limit, t.period_s)).first():
                        continue
                    tat = conn.execute(
                        select(RateLimitState.tat).where(RateLimitState.key == key)
                    ).scalar_one()
                    waits[i] = max(_gcra(tat, now, t.limit, t.period_s)[1], 1e-3)
                refusal = _refusal(waits)
                if refusal is not None:
                    tx.rollback()
            self._cleanup(now)
        except SQLAlchemyError as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc
        return refusal

    def failures(self, keys: Iterable[str], *, since: float) -> dict[str, list[float]]:
        wanted = {store_key(k): k for k in keys}
        out: dict[str, list[float]] = {k: [] for k in wanted.values()}
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(LoginFailure.key, LoginFailure.at)
                    .where(LoginFailure.key.in_(list(wanted)), LoginFailure.at > since)
                    .order_by(LoginFailure.at)
                )
                for key, at in rows:
                    out[wanted[key]].append(at)
        except SQLAlchemyError as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc
        return out

    def add_failure(self, keys: Iterable[str], *, at: float, keep_s: float) -> None:
        self._keep_failures_s = keep_s
        rows = [{"key": store_key(k), "at": at} for k in keys]
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(LoginFailure), rows)
            self._cleanup(at)
        except SQLAlchemyError as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc

    def clear(self, keys: Iterable[str]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(LoginFailure).where(LoginFailure.key.in_([store_key(k) for k in keys]))
                )
        except SQLAlchemyError as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc

    def remember(self, key: str, *, until: float) -> None:
        t = KnownLoginAddress.__table__.c
        stmt = self._insert(KnownLoginAddress).values(key=store_key(key), until=until)
        stmt = stmt.on_conflict_do_update(index_elements=[t.key], set_={"until": until})
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt)
        except SQLAlchemyError as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc

    def known(self, key: str, *, now: float) -> bool:
        q = select(KnownLoginAddress.until).where(
            KnownLoginAddress.key == store_key(key), KnownLoginAddress.until > now
        )
        try:
            with self.engine.connect() as conn:
                return conn.execute(q).first() is not None
        except SQLAlchemyError as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc

    def _cleanup(self, now: float) -> None:
        """Delete spent rows at most once a minute per process: rate rows whose time has
        passed (the same as no row), failures older than the login window and pairs no
        longer remembered."""
        if time.monotonic() - self._cleaned_at < CLEANUP_EVERY_S:
            return
        self._cleaned_at = time.monotonic()
        with self.engine.begin() as conn:
            conn.execute(delete(RateLimitState).where(RateLimitState.tat < now))
            conn.execute(delete(LoginFailure).where(LoginFailure.at < now - self._keep_failures_s))
            conn.execute(delete(KnownLoginAddress).where(KnownLoginAddress.until <= now))


# GCRA for several keys in one atomic step, all or nothing: ARGV = now, then an interval and a
# burst tolerance per key. Returns {index, wait} of the longest refusal (1-based), or {0, '0'}.
# Numbers travel as strings: Redis turns a Lua number into an integer.
_TAKE = """
local now = tonumber(ARGV[1])
local news = {}
local worst, worst_wait = 0, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local tau = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or ARGV[1])
  if tat < now then tat = now end
  if tat - now > tau then
    if tat - tau - now > worst_wait then worst, worst_wait = i, tat - tau - now end
  end
  news[i] = tat + interval
end
if worst > 0 then return {worst, tostring(worst_wait)} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tostring(news[i]), 'PX', math.ceil((news[i] - now) * 1000) + 1000)
end
return {0, '0'}
"""


class RedisStore:
    """Counts in Redis: a string per rate key (its theoretical arrival time, expiring when
    spent), a sorted set of failure times per login key and a string per remembered pair
    (expiring when forgotten)."""

    backend = "redis"
    PREFIX = "clearscan:throttle:"

    def __init__(self, url: str, *, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        try:
            import redis
        except ImportError:
            raise ConfigError(
                "a Redis URL is set for the throttle store, but the redis client is not "
                "installed: pip install 'clearscan[queue]' (the `queue` extra)"
            ) from None
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._take = self.client.register_script(_TAKE)

    def _rate(self, key: str) -> str:
        return f"{self.prefix}rate:{store_key(key)}"

    def _fails(self, key: str) -> str:
        return f"{self.prefix}fail:{store_key(key)}"

    def take(self, takes: Sequence[Take]) -> Refusal | None:
        args = [repr(time.time())]
        for t in takes:
            interval = t.period_s / t.limit
            args += [repr(interval), repr(t.period_s - interval)]
        try:
            index, wait = self._take(keys=[self._rate(t.key) for t in takes], args=args)
        except self._errors as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc
        return Refusal(int(index) - 1, float(wait)) if int(index) else None

    def failures(self, keys: Iterable[str], *, since: float) -> dict[str, list[float]]:
        keys = list(keys)
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.zrangebyscore(self._fails(key), f"({since!r}", "+inf", withscores=True)
            replies = pipe.execute()
        except self._errors as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc
        return {k: [float(score) for _, score in r] for k, r in zip(keys, replies, strict=True)}

    def add_failure(self, keys: Iterable[str], *, at: float, keep_s: float) -> None:
        try:
            pipe = self.client.pipeline(transaction=True)
            for key in keys:
                k = self._fails(key)
                pipe.zadd(k, {f"{at!r}:{uuid.uuid4().hex[:8]}": at})
                pipe.zremrangebyscore(k, "-inf", at - keep_s)
                pipe.expire(k, math.ceil(keep_s) + 1)
            pipe.execute()
        except self._errors as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc

    def clear(self, keys: Iterable[str]) -> None:
        names = [self._fails(k) for k in keys]
        try:
            if names:
                self.client.delete(*names)
        except self._errors as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc

    def _known(self, key: str) -> str:
        return f"{self.prefix}known:{store_key(key)}"

    def remember(self, key: str, *, until: float) -> None:
        try:  # each success remembers the pair for the same time from now: set, not extend
            self.client.set(self._known(key), "1", pxat=max(1, math.ceil(until * 1000)))
        except self._errors as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc

    def known(self, key: str, *, now: float) -> bool:
        try:
            return bool(self.client.exists(self._known(key)))
        except self._errors as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc


def redis_url(settings: Settings) -> str | None:
    """CLEARSCAN_REDIS_URL, else the job broker's URL when it is a Redis one."""
    if settings.redis_url:
        return settings.redis_url
    broker = settings.broker_url or ""
    return broker if broker.startswith(("redis://", "rediss://")) else None


def open_store(settings: Settings, engine: Engine) -> ThrottleStore:
    """The store CLEARSCAN_RATE_LIMIT_STORE names; `auto`: Redis when a Redis URL is known,
    the database on PostgreSQL, else memory (SQLite is served by one process)."""
    choice = settings.rate_limit_store
    url = redis_url(settings)
    if choice == "auto":
        if url:
            choice = "redis"
        elif engine.dialect.name == "postgresql":
            choice = "database"
        else:
            choice = "memory"
    if choice == "redis":
        if not url:
            raise ConfigError(
                "CLEARSCAN_RATE_LIMIT_STORE=redis needs CLEARSCAN_REDIS_URL (or a redis:// "
                "CLEARSCAN_BROKER_URL)"
            )
        return RedisStore(url)
    if choice == "database":
        return DatabaseStore(engine)
    return MemoryStore()


class _Guard:
    """Lets a check through when its store is unavailable, logging that at most once a
    minute (a rate limit must not take the service down with its store)."""

    def __init__(self) -> None:
        self._logged_at = -math.inf

    def unavailable(self, store: ThrottleStore, exc: ThrottleUnavailable) -> None:
        now = time.monotonic()
        if now - self._logged_at >= 60.0:
            self._logged_at = now
            log.error("throttle store %s unavailable (%s): not limiting", store.backend, exc)


class LoginLimiter:
    """Failed logins per (username, client address) pair with exponential back-off, counted in
    `store` (default: this process's memory). After `max_failures` failures of a pair within
    `window_seconds`, each further attempt of that pair waits 1 s, 2 s, 4 s ... after the last
    failure, at most `backoff_max_seconds`. Other addresses are not slowed down for the same
    username, and a pair that signed in successfully within `known_days` is never refused the
    right password. Keys are HMACs under `secret` (default: a random key of this process)."""

    def __init__(
        self,
        *,
        max_failures: int,
        window_seconds: float,
        backoff_max_seconds: float = 900.0,
        known_days: float = 30.0,
        secret: str | None = None,
        store: ThrottleStore | None = None,
    ) -> None:
        self.max_failures = max(1, max_failures)
        self.window = float(window_seconds)
        self.backoff_max = float(backoff_max_seconds)
        self.known_s = known_days * 86400.0
        self.store: ThrottleStore = store if store is not None else MemoryStore()
        self._key = (secret if secret is not None else uuid.uuid4().hex).encode()
        self._guard = _Guard()

    def digest(self, text: str) -> str:
        """A keyed hash of `text` (hex, 32 characters): equal texts give equal digests, and
        nobody without the secret can test guesses against it."""
        return hmac.new(self._key, text.encode(), "sha256").hexdigest()[:32]

    def pair(self, username: str, address: str | None) -> str:
        """The store key of a (username, address) pair: usernames compare case-blind."""
        return "pair:" + self.digest(f"login\0{username.lower()}\0{address or 'unknown'}")

    def backoff(self, failures: int) -> float:
        """The wait after the last of `failures` failures: 0 below max_failures, then 1 s,
        2 s, 4 s ... capped."""
        if failures < self.max_failures:
            return 0.0
        return min(self.backoff_max, 2.0 ** min(failures - self.max_failures, 62))

    def wait(self, pair: str) -> float:
        """Seconds until the pair may try again (0 when allowed now)."""
        now = time.time()
        try:
            times = self.store.failures([pair], since=now - self.window)[pair]
        except ThrottleUnavailable as exc:
            self._guard.unavailable(self.store, exc)
            return 0.0
        if not times:
            return 0.0
        return max(0.0, times[-1] + self.backoff(len(times)) - now)

    def known(self, pair: str) -> bool:
        """Whether the pair signed in successfully within `known_days`."""
        if self.known_s <= 0:
            return False
        try:
            return self.store.known(pair, now=time.time())
        except ThrottleUnavailable as exc:
            self._guard.unavailable(self.store, exc)
            return False

    def failed(self, pair: str) -> None:
        try:
            self.store.add_failure([pair], at=time.time(), keep_s=self.window)
        except ThrottleUnavailable as exc:
            self._guard.unavailable(self.store, exc)

    def succeeded(self, pair: str, *, keep_failures: bool = False) -> None:
        """Remember the pair for `known_days` and clear its failures, unless `keep_failures`
        (a remembered pair let through during its back-off: the failures may be someone
        else's behind the same address, and they keep waiting)."""
        try:
            if not keep_failures:
                self.store.clear([pair])
            if self.known_s > 0:
                self.store.remember(pair, until=time.time() + self.known_s)
        except ThrottleUnavailable as exc:
            self._guard.unavailable(self.store, exc)


@dataclass(frozen=True)
class Limit:
    """`per_minute` events of one kind per key; 0: no limit."""

    per_minute: int
    what: str  # how a refusal names the events: "predictions"

    @property
    def on(self) -> bool:
        return self.per_minute > 0


class RateLimits:
    """Named request-rate limits (``predict:user``, ``predict:address``, ``login:address``)
    counted in one store."""

    def __init__(self, store: ThrottleStore, limits: Mapping[str, Limit]) -> None:
        self.store = store
        self.limits = dict(limits)
        self._guard = _Guard()

    @classmethod
    def from_settings(cls, settings: Settings, store: ThrottleStore) -> RateLimits:
        return cls(
            store,
            {
                "predict:user": Limit(settings.rate_limit_predict_per_user, "predictions"),
                "predict:address": Limit(settings.rate_limit_predict_per_address, "predictions"),
                "login:address": Limit(settings.rate_limit_login_per_address, "sign-in attempts"),
            },
        )

    def active(self, name: str) -> bool:
        limit = self.limits.get(name)
        return limit is not None and limit.on

    def check(self, checks: Iterable[tuple[str, str]]) -> RateLimited | None:
        """Count one request against each (limit name, subject) pair, e.g. ("predict:user",
        "42"), all or nothing: None when every limit allows it, else the refusal of the one
        that refuses longest (and nothing is counted). Limits that are off are skipped."""
        active = [
            (limit, Take(f"{name}:{subject}", limit.per_minute, 60.0))
            for name, subject in checks
            if (limit := self.limits.get(name)) is not None and limit.on
        ]
        if not active:
            return None
        try:
            refusal = self.store.take([take for _, take in active])
        except ThrottleUnavailable as exc:
            self._guard.unavailable(self.store, exc)
            return None
        if refusal is None:
            return None
        return RateLimited(refusal.wait, active[refusal.index][0].what)
