"""The catalogue: every model version found in the bundled folder and in the model store, looked
up by name and version, and loaded on demand through the application's model cache.

A package whose manifest is invalid is left out and reported (`problems`). A version that fails
to load is marked unavailable with the reason (`ModelEntry.error`) and never takes the server
down; which version of a name serves is the routing's choice (:mod:`clearscan.registry.routing`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from clearscan.inference.base import Model
from clearscan.inference.manifest import ManifestError, ModelManifest, load_manifest
from clearscan.inference.runtimes import create_model
from clearscan.inference.types import ModelLoadError
from clearscan.registry.cache import CacheKey, ModelCache
from clearscan.registry.errors import ModelNotFound, ModelUnavailable
from clearscan.registry.ref import ModelRef, version_key

__all__ = ["BUNDLED_DIR", "Catalog", "ModelEntry", "bundled_versions", "package_dirs"]

log = logging.getLogger(__name__)
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled_models"


@dataclass
class ModelEntry:
    """One version of one model. Loaded on demand through the catalogue's cache."""

    manifest: ModelManifest
    package_dir: Path
    source: str  # "bundled" | "store"
    cache: ModelCache = field(repr=False)
    error: str | None = None  # why it cannot load (unavailable)
    verified: bool = False  # loaded successfully at least once in this process
    explainable: bool = False
    cam_error: str | None = None

    @property
    def ref(self) -> ModelRef:
        return ModelRef.of(self.manifest)

    @property
    def key(self) -> CacheKey:
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


class Catalog:
    """The versions under `dirs` (the bundled folder and the model store), by name and version.
    Thread-safe; `scan` rebuilds it, `rescan` adds versions imported since."""

    def __init__(
        self,
        dirs: list[Path],
        *,
        cache: ModelCache,
        threads: int = 0,
        device: str = "cpu",
        parallel_runs: int = 1,
    ) -> None:
        self.dirs = dirs
        self.cache = cache
        self.threads = threads
        self.device = device
        self.parallel_runs = parallel_runs
        self._versions: dict[str, dict[str, ModelEntry]] = {}
        self._problems: list[str] = []
        self._lock = threading.RLock()

    # --- discovery ----------------------------------------------------------------------------

    def scan(self) -> None:
        """Read every package again (start-up); invalid manifests become `problems`."""
        versions: dict[str, dict[str, ModelEntry]] = {}
        problems: list[str] = []
        for root in self.dirs:
            for pkg in package_dirs(root):
                try:
                    manifest = load_manifest(pkg)
                except ManifestError as exc:
                    problems.append(str(exc))
                    log.error("model package rejected: %s", exc)
                    continue
                versions.setdefault(manifest.name, {}).setdefault(
                    manifest.version, self._entry(manifest, pkg, root)
                )
        with self._lock:
            self._versions = versions
            self._problems = problems

    def rescan(self) -> None:
        """Add the versions that appeared since the last scan (imports, training runs)."""
        for root in self.dirs:
            for pkg in package_dirs(root):
                try:
                    manifest = load_manifest(pkg)
                except ManifestError:
                    continue
                with self._lock:
                    known = self._versions.setdefault(manifest.name, {})
                    if manifest.version not in known:
                        known[manifest.version] = self._entry(manifest, pkg, root)

    def _entry(self, manifest: ModelManifest, pkg: Path, root: Path) -> ModelEntry:
        source = "bundled" if root == BUNDLED_DIR else "store"
        return ModelEntry(manifest=manifest, package_dir=pkg, source=source, cache=self.cache)

    def forget(self, name: str, version: str) -> None:
        with self._lock:
            self._versions.get(name, {}).pop(version, None)
            if not self._versions.get(name):
                self._versions.pop(name, None)

    # --- lookup -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._versions)

    def of(self, name: str) -> dict[str, ModelEntry]:
        """The versions of `name` by version text (a copy; empty for an unknown name)."""
        with self._lock:
            return dict(self._versions.get(name, {}))

    def find(self, name: str, version: str) -> ModelEntry | None:
        """The entry, or None, without looking on disk again."""
        with self._lock:
            return self._versions.get(name, {}).get(version)

    def version(self, name: str, version: str) -> ModelEntry:
        """The entry of `name:version`, looking on disk again once if it is not known yet
        (another process imported it); ModelNotFound otherwise."""
        entry = self.find(name, version)
        if entry is None:
            self.rescan()
            entry = self.find(name, version)
        if entry is None:
            raise ModelNotFound(f"model {name}:{version} not found")
        return entry

    def versions(self, name: str) -> list[ModelEntry]:
        """Every version of `name`, highest first; ModelNotFound for an unknown name."""
        with self._lock:
            if name not in self._versions:
                raise ModelNotFound(f"model {name!r} not found")
            entries = list(self._versions[name].values())
        return sorted(entries, key=lambda e: version_key(e.manifest.version), reverse=True)

    def highest(self, name: str) -> ModelEntry | None:
        versions = self.of(name)
        return versions[max(versions, key=version_key)] if versions else None

    @property
    def problems(self) -> list[str]:
        """Packages left out: their manifest is invalid (the message names the field)."""
        with self._lock:
            return list(self._problems)

    def unavailable(self) -> list[ModelEntry]:
        """Every version known not to load, by name, highest version first."""
        out = []
        for name in self.names():
            failed = [e for e in self.of(name).values() if e.error is not None]
            out += sorted(failed, key=lambda e: version_key(e.manifest.version), reverse=True)
        return out

    # --- loading ------------------------------------------------------------------------------

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

    def verify(self, entry: ModelEntry | None) -> None:
        """Load `entry` once to learn whether it can serve (it stays in the cache, least
        recently used, and may be unloaded later; a later request loads it again)."""
        if entry is None or entry.verified or entry.error is not None:
            return
        try:
            with self.lease(entry):
                pass
        except ModelUnavailable:
            return

    def load_version(self, name: str, version: str) -> ModelEntry:
        """The entry of `name:version`, loaded once (check `error` for whether it can serve)."""
        entry = self.version(name, version)
        self.verify(entry)
        return entry


def package_dirs(root: Path) -> list[Path]:
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


def bundled_versions(name: str) -> list[str]:
    """The versions of `name` shipped with ClearScan (bundled packages)."""
    out = []
    for pkg in package_dirs(BUNDLED_DIR):
        try:
            m = load_manifest(pkg)
        except ManifestError:
            continue
        if m.name == name:
            out.append(m.version)
    return out
