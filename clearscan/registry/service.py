"""The models the server can run: every version found in the bundled folder and in the model
store, and, per model name, which version serves (roll-out state in the database).

Loaded versions are cached process-wide by folder and weights hash. A version that fails to load
is marked unavailable with the reason and never takes the server down; a name whose active
version is unavailable is served by its last good version. Activation swaps a reference: requests
in flight keep the model object they started with."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.inference.runtime import Model, ModelLoadError, create_model
from clearscan.registry.manifest import ManifestError, ModelManifest, load_manifest
from clearscan.registry.models import ModelState

log = logging.getLogger(__name__)
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled_models"
STATE_TTL_S = 1.0  # how stale another process's activation may be seen here


class RegistryError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ModelNotFound(RegistryError):
    status_code = 404


class ModelUnavailable(RegistryError):
    status_code = 503


class RolloutConflict(RegistryError):
    status_code = 409


class RolloutInvalid(RegistryError):
    status_code = 422


def bucket(key: str) -> int:
    """0-99, stable for a key across processes and restarts (not Python's salted hash())."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


def version_key(v: str) -> tuple[int, ...]:
    core = v.split("+")[0].split("-")[0]
    try:
        return tuple(int(p) for p in core.split("."))
    except ValueError:
        return (-1,)


class ModelCache:
    """Loaded versions, least recently used first, within a memory cap (bytes; None: no cap).

    A version counts its weights file size (`Model.memory_bytes`). When a load takes the total
    over the cap, the least recently used versions that no request is using are unloaded (their
    batchers finish what is queued, then stop); a version in use is never unloaded, so the cap
    can be exceeded while every loaded version is busy. Loads of one version are serialised: two
    requests for a cold version load it once."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self._models: OrderedDict[tuple[Path, str], Model] = OrderedDict()
        self._leases: dict[tuple[Path, str], int] = {}
        self._loading: dict[tuple[Path, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    def peek(self, key: tuple[Path, str]) -> Model | None:
        with self._lock:
            return self._models.get(key)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(m.memory_bytes for m in self._models.values())

    def keys(self) -> list[tuple[Path, str]]:
        """Loaded versions, least recently used first."""
        with self._lock:
            return list(self._models)

    def acquire(self, key: tuple[Path, str], loader: Callable[[], Model]) -> Model:
        """The loaded model for `key` (loading it with `loader` if cold), marked in use until
        `release(key)`. `loader` raises ModelLoadError for a version that cannot load."""
        with self._lock:
            model = self._hit(key)
            if model is not None:
                return model
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                model = self._hit(key)
                if model is not None:
                    return model
            try:
                model = loader()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._models[key] = model
                self._leases[key] = self._leases.get(key, 0) + 1
                self.loads += 1
                victims = self._over_cap()
        self._close(victims)
        return model

    def release(self, key: tuple[Path, str]) -> None:
        with self._lock:
            left = self._leases.get(key, 0) - 1
            if left > 0:
                self._leases[key] = left
            else:
                self._leases.pop(key, None)
            victims = self._over_cap()
        self._close(victims)

    @contextmanager
    def lease(self, key: tuple[Path, str], loader: Callable[[], Model]) -> Iterator[Model]:
        model = self.acquire(key, loader)
        try:
            yield model
        finally:
            self.release(key)

    def resize(self, capacity_bytes: int | None) -> None:
        with self._lock:
            self.capacity_bytes = capacity_bytes
            victims = self._over_cap()
        self._close(victims)

    def clear(self) -> None:
        """Unload every version no request is using (as a restart would, for those)."""
        with self._lock:
            idle = [k for k in self._models if not self._leases.get(k)]
            victims = [self._models.pop(k) for k in idle]
        self._close(victims)

    def _hit(self, key: tuple[Path, str]) -> Model | None:
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            self._leases[key] = self._leases.get(key, 0) + 1
        return model

    def _over_cap(self) -> list[Model]:
        if self.capacity_bytes is None:
            return []
        total = sum(m.memory_bytes for m in self._models.values())
        victims = []
        for k in list(self._models):
            if total <= self.capacity_bytes:
                break
            if self._leases.get(k):
                continue
            model = self._models.pop(k)
            total -= model.memory_bytes
            victims.append(model)
            self.evictions += 1
        return victims

    @staticmethod
    def _close(victims: list[Model]) -> None:
        for m in victims:
            log.info("model %s unloaded (model cache cap)", m.manifest.ref)
            m.close()


# Process-wide: every registry of a process shares its loaded versions (the server has one).
_cache = ModelCache()


def clear_cache() -> None:
    """Forget every loaded model (the next load re-verifies the files), as a restart would."""
    _cache.clear()


@dataclass
class ModelEntry:
    """One version of one model. Loaded on demand through the registry's cache."""

    manifest: ModelManifest
    package_dir: Path
    source: str  # "bundled" | "store"
    cache: ModelCache = field(default_factory=lambda: _cache, repr=False)
    error: str | None = None  # why it cannot load (unavailable)
    verified: bool = False  # loaded successfully at least once in this process
    explainable: bool = False
    cam_error: str | None = None

    @property
    def key(self) -> tuple[Path, str]:
        return (self.package_dir.resolve(), self.manifest.files.get(self.manifest.weights, ""))

    @property
    def available(self) -> bool:
        return self.error is None and self.verified

    @property
    def model(self) -> Model | None:
        """The loaded model when it is in memory now (None when cold or unavailable)."""
        return None if self.error is not None else self.cache.peek(self.key)

    @property
    def model_card(self) -> str | None:
        if not self.manifest.model_card:
            return None
        try:
            return (self.package_dir / self.manifest.model_card).read_text(encoding="utf-8")
        except OSError:
            return None


@dataclass
class _Rollout:
    active: str
    history: list[str] = field(default_factory=list)
    canary_version: str | None = None
    canary_percent: int = 0
    shadow_version: str | None = None


class ModelRegistry:
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
        self.dirs = dirs
        self.sessions = sessions
        self.threads = threads
        self.device = device
        self.parallel_runs = parallel_runs
        self.cache = cache if cache is not None else _cache
        self._versions: dict[str, dict[str, ModelEntry]] = {}
        self._state: dict[str, _Rollout] = {}
        self._problems: list[str] = []
        self._lock = threading.RLock()
        self._state_read_at = 0.0

    # --- discovery and loading ----------------------------------------------------------------

    def load_all(self) -> None:
        versions: dict[str, dict[str, ModelEntry]] = {}
        problems: list[str] = []
        for root in self.dirs:
            for pkg in _package_dirs(root):
                try:
                    manifest = load_manifest(pkg)
                except ManifestError as exc:
                    problems.append(str(exc))
                    log.error("model package rejected: %s", exc)
                    continue
                source = "bundled" if root == BUNDLED_DIR else "store"
                versions.setdefault(manifest.name, {}).setdefault(
                    manifest.version,
                    ModelEntry(manifest=manifest, package_dir=pkg, source=source, cache=self.cache),
                )
        with self._lock:
            self._versions = versions
            self._problems = problems
        self._read_state(force=True)
        for name in list(versions):
            self._ensure_loaded(self._serving_entry(name))
        self._pin_new_names()

    def _pin_new_names(self) -> None:
        """Record the serving version of names seen for the first time, so that a later import
        of a higher version never changes what serves: only activation does."""
        if self.sessions is None:
            return
        with self._lock:
            new = [n for n in self._versions if n not in self._state]
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

    def _ensure_loaded(self, entry: ModelEntry | None) -> None:
        """Load `entry` once to learn whether it can serve (it stays in the cache, least
        recently used, and may be unloaded later; a later request loads it again)."""
        if entry is None or entry.verified or entry.error is not None:
            return
        try:
            with self.lease(entry):
                pass
        except ModelUnavailable:
            return

    def _loader(self, entry: ModelEntry) -> Callable[[], Model]:
        def load() -> Model:
            model = create_model(
                entry.package_dir,
                entry.manifest,
                threads=self.threads,
                device=self.device,
                parallel_runs=self.parallel_runs,
            )
            model.load()
            return model

        return load

    @contextmanager
    def lease(self, entry: ModelEntry) -> Iterator[Model]:
        """The loaded model of `entry`, loaded now if it is cold, kept loaded while in use.
        A version that fails to load is marked unavailable (ModelUnavailable is raised)."""
        if entry.error is not None:
            raise ModelUnavailable(f"model {entry.manifest.ref} is unavailable: {entry.error}")
        try:
            model = self.cache.acquire(entry.key, self._loader(entry))
        except ModelLoadError as exc:
            entry.error = str(exc)
            log.error("model %s unavailable: %s", entry.manifest.ref, exc)
            raise ModelUnavailable(f"model {entry.manifest.ref} is unavailable: {exc}") from None
        try:
            if not entry.verified:
                entry.verified = True
                entry.explainable = model.explainable
                entry.cam_error = model.cam_error
                if model.cam_error and entry.manifest.explain.method != "none":
                    log.warning(
                        "model %s: explanations off: %s", entry.manifest.ref, model.cam_error
                    )
                log.info("model %s loaded and warmed", entry.manifest.ref)
            yield model
        finally:
            self.cache.release(entry.key)

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
            r.name: _Rollout(
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
            unknown = [
                (n, s.active)
                for n, s in state.items()
                if s.active and s.active not in self._versions.get(n, {})
            ]
        if unknown:  # another process imported a version: look again
            self._rescan()

    def load_version(self, name: str, version: str) -> ModelEntry:
        entry = self.version(name, version)
        self._ensure_loaded(entry)
        return entry

    def discover(self) -> None:
        """Look for versions added to the store since start-up (imports)."""
        self._rescan()
        self._pin_new_names()

    def _rescan(self) -> None:
        for root in self.dirs:
            for pkg in _package_dirs(root):
                try:
                    manifest = load_manifest(pkg)
                except ManifestError:
                    continue
                with self._lock:
                    known = self._versions.setdefault(manifest.name, {})
                    if manifest.version not in known:
                        source = "bundled" if root == BUNDLED_DIR else "store"
                        known[manifest.version] = ModelEntry(
                            manifest, pkg, source, cache=self.cache
                        )

    def _default_version(self, name: str) -> str | None:
        versions = self._versions.get(name, {})
        return max(versions, key=version_key) if versions else None

    def _serving_entry(self, name: str) -> ModelEntry | None:
        """The version that serves `name`: the active one, or, if it cannot load, the last good one
        (previous actives newest first, then the highest other version)."""
        with self._lock:
            versions = self._versions.get(name, {})
            st = self._state.get(name)
            if st is not None and not st.active:  # trained versions wait for a human decision
                return None
            order: list[str] = []
            if st:
                order = [st.active, *reversed(st.history)]
            default = self._default_version(name)
            order += sorted(versions, key=version_key, reverse=True)
            if default and not st:
                order.insert(0, default)
        seen: set[str] = set()
        for v in order:
            if v in seen or v not in versions:
                continue
            seen.add(v)
            entry = versions[v]
            self._ensure_loaded(entry)
            if entry.error is None:
                return entry
        first = next((versions[v] for v in order if v in versions), None)
        return first

    # --- queries ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._versions)

    def entries(self, *, include_inactive: bool = False) -> list[ModelEntry]:
        """The serving version of each model name; with `include_inactive`, names that have no
        active version yet (freshly trained) contribute their highest version."""
        self._read_state()
        out = []
        for name in self.names():
            entry = self._serving_entry(name)
            if entry is None and include_inactive:
                with self._lock:
                    versions = self._versions.get(name, {})
                    entry = versions[max(versions, key=version_key)] if versions else None
            if entry is not None:
                out.append(entry)
        return out

    def versions(self, name: str) -> list[ModelEntry]:
        self._read_state()
        with self._lock:
            if name not in self._versions:
                raise ModelNotFound(f"model {name!r} not found")
            entries = sorted(
                self._versions.get(name, {}).values(),
                key=lambda e: version_key(e.manifest.version),
                reverse=True,
            )
        return entries

    def version(self, name: str, version: str) -> ModelEntry:
        with self._lock:
            entry = self._versions.get(name, {}).get(version)
        if entry is None:
            self._rescan()
            with self._lock:
                entry = self._versions.get(name, {}).get(version)
        if entry is None:
            raise ModelNotFound(f"model {name}:{version} not found")
        return entry

    def get(self, name: str) -> ModelEntry:
        self._read_state()
        entry = self._serving_entry(name)
        if entry is None:
            with self._lock:
                known = bool(self._versions.get(name))
            if known:
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
            with self._lock:
                versions = self._versions[name]
                return versions[max(versions, key=version_key)]

    def status(self, entry: ModelEntry) -> str:
        """active (it serves its name), inactive, or unavailable (it failed to load)."""
        if entry.error is not None:
            return "unavailable"
        return "active" if self._serving_entry(entry.manifest.name) is entry else "inactive"

    @property
    def problems(self) -> list[str]:
        return list(self._problems)

    # --- changes ------------------------------------------------------------------------------

    @contextmanager
    def _state_row(self, db: Session, name: str) -> Iterator[ModelState]:
        row = db.get(ModelState, name, with_for_update=True)
        if row is None:
            current = self.get(name).manifest.version
            row = ModelState(name=name, active_version=current, history=[], canary_percent=0)
            db.add(row)
        yield row

    def activate(self, db: Session, name: str, version: str, *, actor: str | None) -> ModelEntry:
        """Make `version` serve `name` (caller audits and commits). Loads it first: a version that
        cannot load is refused and nothing changes."""
        entry = self.version(name, version)
        self._ensure_loaded(entry)
        if entry.error is not None:
            raise RolloutConflict(f"{name}:{version} cannot be activated: {entry.error}")
        with self._state_row(db, name) as row:
            if row.active_version != version:
                previous = [row.active_version] if row.active_version else []
                row.history = [*[v for v in row.history if v != version], *previous][-20:]
                row.active_version = version
            if row.canary_version == version:
                row.canary_version, row.canary_percent = None, 0
            row.updated_at, row.updated_by = datetime.now(UTC), actor
        db.flush()
        return entry

    def rollback(self, db: Session, name: str, *, actor: str | None) -> tuple[str, str]:
        """Re-activate the previously active version. Returns (from, to)."""
        with self._state_row(db, name) as row:
            history = list(row.history)
            while history:
                candidate = history.pop()
                try:
                    entry = self.version(name, candidate)
                except ModelNotFound:
                    continue
                self._ensure_loaded(entry)
                if entry.error is None:
                    old = row.active_version
                    row.history, row.active_version = history, candidate
                    row.updated_at, row.updated_by = datetime.now(UTC), actor
                    db.flush()
                    return old, candidate
            raise RolloutConflict(f"model {name!r} has no earlier version to roll back to")

    # --- canary and shadow --------------------------------------------------------------------

    def route(self, name: str, key: str) -> ModelEntry:
        """The version that answers a request keyed by `key` (the case id): the canary for a
        fixed share of keys, otherwise the serving version. Deterministic per key."""
        serving = self.get(name)
        with self._lock:
            st = self._state.get(name)
        if st and st.canary_version and st.canary_percent > 0 and bucket(key) < st.canary_percent:
            try:
                canary = self.load_version(name, st.canary_version)
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
                with self.lease(entry) as model:
                    yield entry, model
                    return
            except ModelUnavailable:
                if entry.error is None:  # raised by the caller's code, not by loading
                    raise
        raise ModelUnavailable(f"model {name!r} has no version that loads")

    def shadow_of(self, name: str) -> ModelEntry | None:
        with self._lock:
            st = self._state.get(name)
        if not st or not st.shadow_version:
            return None
        try:
            entry = self.load_version(name, st.shadow_version)
        except ModelNotFound:
            return None
        return entry if entry.error is None else None

    def rollout(self, name: str) -> dict[str, object]:
        active = self.get(name).manifest.version
        with self._lock:
            st = self._state.get(name)
        return {
            "name": name,
            "active_version": active,
            "history": list(st.history) if st else [],
            "canary": {"version": st.canary_version, "percent": st.canary_percent}
            if st and st.canary_version
            else None,
            "shadow": {"version": st.shadow_version} if st and st.shadow_version else None,
        }

    def set_rollout(
        self,
        db: Session,
        name: str,
        *,
        canary: tuple[str, int] | None,
        shadow: str | None,
        actor: str | None,
    ) -> None:
        """Replace the canary and shadow settings of `name` (None clears one)."""
        active = self.get(name).manifest.version
        for role, version in (("canary", canary[0] if canary else None), ("shadow", shadow)):
            if version is None:
                continue
            if version == active:
                raise RolloutConflict(f"{role} version {version} is already the active version")
            entry = self.load_version(name, version)  # ModelNotFound -> 404
            if entry.error is not None:
                raise RolloutConflict(f"{role} version {name}:{version} cannot load: {entry.error}")
        if canary is not None and not 0 <= canary[1] <= 100:
            raise RolloutInvalid("canary.percent must be between 0 and 100")
        with self._state_row(db, name) as row:
            row.canary_version, row.canary_percent = (canary[0], canary[1]) if canary else (None, 0)
            row.shadow_version = shadow
            row.updated_at, row.updated_by = datetime.now(UTC), actor
        db.flush()

    def apply_committed(self) -> None:
        """Pick up a change this process just committed (no TTL wait)."""
        self._read_state(force=True)

    def is_active(self, name: str, version: str) -> bool:
        try:
            return self.get(name).manifest.version == version
        except ModelNotFound:
            return False

    def forget(self, name: str, version: str) -> None:
        with self._lock:
            self._versions.get(name, {}).pop(version, None)
            if not self._versions.get(name):
                self._versions.pop(name, None)


def _package_dirs(root: Path) -> list[Path]:
    """Package folders directly under `root` (bundled) or under `root/<name>/` (store)."""
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if (p / "manifest.json").exists():
            out.append(p)
        else:
            out += [v for v in sorted(p.iterdir()) if v.is_dir() and not v.name.startswith(".")]
    return out
