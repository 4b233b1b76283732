"""Which version answers: the roll-out state of each model name (active version, history,
canary, shadow, kept in the database) applied to the catalogue.

A name is served by its active version or, when that cannot load, by its last good version
(previous actives newest first, then the highest other version). A canary answers a fixed share
of cases, chosen by the case id so that every image of a case goes to the same version. A name
that only has freshly trained versions has no active version until an admin activates one.
Activation swaps a reference: requests in flight keep the model object they started with.

Every process keeps a copy of the state and reads it again from the database when its copy is
older than :data:`STATE_TTL_S` (0.5 s), before it routes a request: a change made through another
API process, or the CLI, serves everywhere within that time. The read is one query of a table
with a row per model name (about 0.2 ms on SQLite, 0.5 ms on PostgreSQL), so at most two
requests a second per process pay it. Changes themselves are made by
:mod:`clearscan.registry.service`, which applies its own at once."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.inference.base import Model
from clearscan.registry.cache import ModelCache
from clearscan.registry.catalog import Catalog, ModelEntry
from clearscan.registry.errors import ModelNotFound, ModelUnavailable, RolloutConflict
from clearscan.registry.models import ModelState
from clearscan.registry.ref import version_key

__all__ = ["STATE_TTL_S", "ModelRegistry", "Rollout", "bucket"]

log = logging.getLogger(__name__)
STATE_TTL_S = 0.5  # how stale another process's roll-out change may be seen here


def bucket(key: str) -> int:
    """0-99, stable for a key across processes and restarts (not Python's salted hash())."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


@dataclass
class Rollout:
    """The roll-out state of one name, as last read from the database."""

    active: str  # "" while no version is active (a freshly trained name)
    history: list[str] = field(default_factory=list)  # previously active, oldest first
    canary_version: str | None = None
    canary_percent: int = 0
    shadow_version: str | None = None


class ModelRegistry:
    """The models this process can run: the catalogue of versions, the model cache they load
    into, and the roll-out state that picks which version answers a request."""

    def __init__(
        self,
        dirs: list[Path],
        *,
        sessions: sessionmaker[Session] | None = None,
        threads: int = 0,
        device: str = "cpu",
        parallel_runs: int = 1,
        cache: ModelCache | None = None,
    ) -> None:
        self.catalog = Catalog(
            dirs,
            cache=cache if cache is not None else ModelCache(),
            threads=threads,
            device=device,
            parallel_runs=parallel_runs,
        )
        self.sessions = sessions
        self._state: dict[str, Rollout] = {}
        self._lock = threading.Lock()
        self._state_read_at = 0.0

    @property
    def cache(self) -> ModelCache:
        return self.catalog.cache

    @property
    def dirs(self) -> list[Path]:
        return self.catalog.dirs

    @property
    def threads(self) -> int:
        return self.catalog.threads

    @property
    def device(self) -> str:
        return self.catalog.device

    @property
    def parallel_runs(self) -> int:
        return self.catalog.parallel_runs

    # --- start-up and discovery ---------------------------------------------------------------

    def load_all(self) -> None:
        """Scan the model folders, read the roll-out state, load each name's serving version
        (falling back past versions that cannot load) and pin names seen for the first time."""
        self.catalog.scan()
        self._read_state(force=True)
        for name in self.catalog.names():
            self._serving_entry(name)
        self._pin_new_names()

    def discover(self) -> None:
        """Look for versions added to the store since start-up (imports)."""
        self.catalog.rescan()
        self._pin_new_names()

    def _pin_new_names(self) -> None:
        """Record the serving version of names seen for the first time, so that a later import
        of a higher version never changes what serves: only activation does."""
        if self.sessions is None:
            return
        with self._lock:
            new = [n for n in self.catalog.names() if n not in self._state]
        if not new:
            return
        try:
            with self.sessions() as db:
                for name in new:
                    entry = self._serving_entry(name)
                    if entry is not None and db.get(ModelState, name) is None:
                        db.add(
                            ModelState(
                                name=name,
                                active_version=entry.manifest.version,
                                history=[],
                                canary_percent=0,
                                updated_by="system",
                            )
                        )
                db.commit()
        except SQLAlchemyError as exc:  # another process pinned it first, or the DB is down
            log.warning("cannot record model roll-out state: %s", type(exc).__name__)
        self._read_state(force=True)

    # --- roll-out state -----------------------------------------------------------------------

    def _read_state(self, *, force: bool = False) -> None:
        if self.sessions is None:
            return
        now = time.monotonic()
        if not force and now - self._state_read_at < STATE_TTL_S:
            return
        self._state_read_at = now
        try:
            with self.sessions() as db:
                rows = db.execute(select(ModelState)).scalars().all()
        except SQLAlchemyError as exc:  # keep serving with the state we have
            log.error("cannot read model roll-out state: %s", type(exc).__name__)
            return
        state = {
            r.name: Rollout(
                r.active_version,
                list(r.history or []),
                r.canary_version,
                r.canary_percent,
                r.shadow_version,
            )
            for r in rows
        }
        with self._lock:
            self._state = state
        unknown = [n for n, s in state.items() if s.active and not self.catalog.find(n, s.active)]
        if unknown:  # another process imported a version: look again
            self.catalog.rescan()

    def apply_committed(self) -> None:
        """Pick up a change this process just committed (no TTL wait)."""
        self._read_state(force=True)

    def state_of(self, name: str) -> Rollout | None:
        with self._lock:
            return self._state.get(name)

    # --- which version serves -----------------------------------------------------------------

    def _serving_entry(self, name: str) -> ModelEntry | None:
        """The version that serves `name`: the active one, or, if it cannot load, the last good one
        (previous actives newest first, then the highest other version)."""
        versions = self.catalog.of(name)
        st = self.state_of(name)
        if st is not None and not st.active:  # trained versions wait for a human decision
            return None
        order: list[str] = [st.active, *reversed(st.history)] if st else []
        order += sorted(versions, key=version_key, reverse=True)
        seen: set[str] = set()
        for v in order:
            if v in seen or v not in versions:
                continue
            seen.add(v)
            entry = versions[v]
            self.catalog.verify(entry)
            if entry.error is None:
                return entry
        return next((versions[v] for v in order if v in versions), None)

    def get(self, name: str) -> ModelEntry:
        """The version serving `name`; RolloutConflict while it has no active version yet,
        ModelNotFound for an unknown name."""
        self._read_state()
        entry = self._serving_entry(name)
        if entry is None:
            if self.catalog.of(name):
                raise RolloutConflict(
                    f"model {name!r} has no active version yet; an admin activates one"
                )
            raise ModelNotFound(f"model {name!r} not found")
        return entry

    def describe(self, name: str) -> ModelEntry:
        """The serving version of `name`, or its highest version when none is active yet."""
        try:
            return self.get(name)
        except RolloutConflict:
            entry = self.catalog.highest(name)
            if entry is None:
                raise ModelNotFound(f"model {name!r} not found") from None
            return entry

    def entries(self, *, include_inactive: bool = False) -> list[ModelEntry]:
        """The serving version of each model name; with `include_inactive`, names that have no
        active version yet (freshly trained) contribute their highest version."""
        self._read_state()
        out = []
        for name in self.catalog.names():
            entry = self._serving_entry(name)
            if entry is None and include_inactive:
                entry = self.catalog.highest(name)
            if entry is not None:
                out.append(entry)
        return out

    def status(self, entry: ModelEntry) -> str:
        """active (it serves its name), inactive, or unavailable (it failed to load)."""
        if entry.error is not None:
            return "unavailable"
        return "active" if self._serving_entry(entry.manifest.name) is entry else "inactive"

    def is_active(self, name: str, version: str) -> bool:
        try:
            return self.get(name).manifest.version == version
        except ModelNotFound:
            return False

    # --- canary and shadow --------------------------------------------------------------------

    def route(self, name: str, key: str) -> ModelEntry:
        """The version that answers a request keyed by `key` (the case id): the canary for a
        fixed share of keys, otherwise the serving version. Deterministic per key."""
        serving = self.get(name)
        st = self.state_of(name)
        if st and st.canary_version and st.canary_percent > 0 and bucket(key) < st.canary_percent:
            try:
                canary = self.catalog.load_version(name, st.canary_version)
            except ModelNotFound:
                canary = None
            if canary is not None and canary.error is None:
                return canary
        if serving.error is not None:
            raise ModelUnavailable(f"model {name!r} is unavailable: {serving.error}")
        return serving

    @contextmanager
    def serve(self, name: str, key: str) -> Iterator[tuple[ModelEntry, Model]]:
        """`route` and hold the chosen version loaded while the request uses it. A version whose
        files fail to load now (corrupted since start-up) is marked unavailable and the request
        falls back to the next good version, as at start-up."""
        for _ in range(8):
            entry = self.route(name, key)
            try:
                with self.catalog.lease(entry) as model:
                    yield entry, model
                    return
            except ModelUnavailable:
                if entry.error is None:  # raised by the caller's code, not by loading
                    raise
        raise ModelUnavailable(f"model {name!r} has no version that loads")

    def shadow_of(self, name: str) -> ModelEntry | None:
        """The shadow version of `name` when it has one that loads."""
        st = self.state_of(name)
        if not st or not st.shadow_version:
            return None
        try:
            entry = self.catalog.load_version(name, st.shadow_version)
        except ModelNotFound:
            return None
        return entry if entry.error is None else None

    def rollout(self, name: str) -> dict[str, object]:
        """Active version, history, canary and shadow of `name` (the API's roll-out body)."""
        active = self.get(name).manifest.version
        st = self.state_of(name)
        return {
            "name": name,
            "active_version": active,
            "history": list(st.history) if st else [],
            "canary": {"version": st.canary_version, "percent": st.canary_percent}
            if st and st.canary_version
            else None,
            "shadow": {"version": st.shadow_version} if st and st.shadow_version else None,
        }

    # --- the catalogue, as the rest of the application asks for it ----------------------------

    def names(self) -> list[str]:
        return self.catalog.names()

    def versions(self, name: str) -> list[ModelEntry]:
        self._read_state()
        return self.catalog.versions(name)

    def version(self, name: str, version: str) -> ModelEntry:
        return self.catalog.version(name, version)

    def load_version(self, name: str, version: str) -> ModelEntry:
        return self.catalog.load_version(name, version)

    def lease(self, entry: ModelEntry) -> AbstractContextManager[Model]:
        """See :meth:`Catalog.lease`."""
        return self.catalog.lease(entry)

    def forget(self, name: str, version: str) -> None:
        self.catalog.forget(name, version)

    @property
    def problems(self) -> list[str]:
        return self.catalog.problems

    def unavailable(self) -> list[ModelEntry]:
        return self.catalog.unavailable()
