"""The set of models the server can run. Core: packages found in the bundled folder and the
data dir's models folder, newest version of each name active. A package that fails to load is
marked unavailable with the reason; it never takes the server down."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from clearscan.inference.runtime import ModelLoadError, OnnxModel
from clearscan.registry.manifest import ManifestError, ModelManifest, load_manifest

log = logging.getLogger(__name__)
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled_models"


class RegistryError(Exception):
    status_code = 400


class ModelNotFound(RegistryError):
    status_code = 404


class ModelUnavailable(RegistryError):
    status_code = 503


@dataclass
class ModelEntry:
    manifest: ModelManifest
    package_dir: Path
    model: OnnxModel | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "active" if self.model is not None else "unavailable"

    @property
    def model_card(self) -> str | None:
        if not self.manifest.model_card:
            return None
        try:
            return (self.package_dir / self.manifest.model_card).read_text(encoding="utf-8")
        except OSError:
            return None


def _version_key(v: str) -> tuple[int, ...]:
    core = v.split("+")[0].split("-")[0]
    return tuple(int(p) for p in core.split("."))


class ModelRegistry:
    def __init__(self, dirs: list[Path], *, threads: int = 0) -> None:
        self.dirs = dirs
        self.threads = threads
        self._entries: dict[str, ModelEntry] = {}
        self._problems: list[str] = []
        self._lock = threading.Lock()

    def load_all(self) -> None:
        found: dict[str, ModelEntry] = {}
        problems: list[str] = []
        for root in self.dirs:
            if not root.is_dir():
                continue
            for pkg in sorted(p for p in root.iterdir() if p.is_dir()):
                try:
                    manifest = load_manifest(pkg)
                except ManifestError as exc:
                    problems.append(str(exc))
                    log.error("model package rejected: %s", exc)
                    continue
                current = found.get(manifest.name)
                if current and _version_key(current.manifest.version) >= _version_key(
                    manifest.version
                ):
                    continue
                found[manifest.name] = ModelEntry(manifest=manifest, package_dir=pkg)
        for entry in found.values():
            model = OnnxModel(entry.package_dir, entry.manifest, threads=self.threads)
            try:
                model.load()
            except ModelLoadError as exc:
                entry.error = str(exc)
                log.error("model %s unavailable: %s", entry.manifest.ref, exc)
                continue
            entry.model = model
            if model.cam_error:
                log.warning("model %s: explanations off: %s", entry.manifest.ref, model.cam_error)
            log.info("model %s loaded and warmed", entry.manifest.ref)
        with self._lock:
            self._entries = found
            self._problems = problems

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.manifest.name)

    @property
    def problems(self) -> list[str]:
        return list(self._problems)

    def get(self, name: str) -> ModelEntry:
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} not found")
        return entry

    def runnable(self, name: str) -> tuple[ModelEntry, OnnxModel]:
        entry = self.get(name)
        if entry.model is None:
            raise ModelUnavailable(f"model {name!r} is unavailable: {entry.error}")
        return entry, entry.model
