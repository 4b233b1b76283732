"""The loaded-model cache: which model versions are in memory, within a memory cap.

One cache belongs to one running application (its state builds it from the settings and hands
it to the registry); nothing is shared at module level, so two applications in one process, or
a restart, start cold."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from clearscan.inference.base import Model

__all__ = ["CacheKey", "ModelCache"]

log = logging.getLogger(__name__)

CacheKey = tuple[Path, str]
"""A version's package folder (resolved) and its weights' sha256."""


class ModelCache:
    """Loaded versions, least recently used first, within a memory cap (bytes; None: no cap).

    A version counts its weights file size (`Model.memory_bytes`). When a load takes the total
    over the cap, the least recently used versions that no request is using are unloaded (their
    batchers finish what is queued, then stop); a version in use is never unloaded, so the cap
    can be exceeded while every loaded version is busy. Loads of one version are serialised: two
    requests for a cold version load it once."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self._models: OrderedDict[CacheKey, Model] = OrderedDict()
        self._leases: dict[CacheKey, int] = {}
        self._loading: dict[CacheKey, threading.Lock] = {}
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    def peek(self, key: CacheKey) -> Model | None:
        with self._lock:
            return self._models.get(key)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(m.memory_bytes for m in self._models.values())

    def keys(self) -> list[CacheKey]:
        """Loaded versions, least recently used first."""
        with self._lock:
            return list(self._models)

    def acquire(self, key: CacheKey, loader: Callable[[], Model]) -> Model:
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

    def release(self, key: CacheKey) -> None:
        with self._lock:
            left = self._leases.get(key, 0) - 1
            if left > 0:
                self._leases[key] = left
            else:
                self._leases.pop(key, None)
            victims = self._over_cap()
        self._close(victims)

    @contextmanager
    def lease(self, key: CacheKey, loader: Callable[[], Model]) -> Iterator[Model]:
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

    def _hit(self, key: CacheKey) -> Model | None:
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
