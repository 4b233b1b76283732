"""Bounds and a cache for the feature preview of table datasets (`tabular.preview`).

A preview reads the whole stored table and, for a sensor stream, computes the features of every
window before showing the first rows, so its cost grows with the table and falls with the step.
Before anything is read it is bounded (:func:`check_bounds`, 422 naming the cap): at most
``max_rows`` rows, and for a sensor stream at most ``max_window_samples`` samples covered by its
windows (about rows / step x window length). What it computes is kept in a small LRU
(:class:`PreviewCache`) keyed by the dataset id, the parameters and the dataset's content (its
content hash and stored description), so a dataset that changes is never answered from the cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from clearscan.config import Settings
from clearscan.datasets.models import Dataset
from clearscan.errors import Unprocessable

__all__ = [
    "PreviewBounds",
    "PreviewCache",
    "PreviewTooLarge",
    "check_bounds",
    "content_key",
    "preview_bounds",
]


class PreviewTooLarge(Unprocessable, ValueError):
    """The preview would read or compute more than its cap (422, naming the cap)."""


@dataclass(frozen=True)
class PreviewBounds:
    max_rows: int = 1_000_000  # CLEARSCAN_PREVIEW_MAX_ROWS
    max_window_samples: int = 20_000_000  # CLEARSCAN_PREVIEW_MAX_WINDOW_SAMPLES


def preview_bounds(settings: Settings) -> PreviewBounds:
    """The bounds the settings give (CLEARSCAN_PREVIEW_MAX_*)."""
    return PreviewBounds(
        max_rows=settings.preview_max_rows,
        max_window_samples=settings.preview_max_window_samples,
    )


def check_bounds(ds: Dataset, *, length: int, step: int, bounds: PreviewBounds) -> None:
    """PreviewTooLarge unless previewing `ds` (windows of `length` samples moved by `step`, for
    a sensor stream) stays within `bounds`; only the stored row count is read."""
    rows = int(ds.n_items)
    if rows > bounds.max_rows:
        raise PreviewTooLarge(
            f"dataset {ds.name!r} has {rows:,} rows; the feature preview reads at most "
            f"{bounds.max_rows:,} (CLEARSCAN_PREVIEW_MAX_ROWS)"
        )
    if not ds.info.get("time_column"):
        return
    windows = rows // step + 1
    samples = windows * length
    if samples > bounds.max_window_samples:
        least = -(-rows * length // bounds.max_window_samples)  # the smallest step that fits
        raise PreviewTooLarge(
            f"windows of {length:,} samples every {step:,} over {rows:,} rows cover about "
            f"{samples:,} samples; the feature preview computes at most "
            f"{bounds.max_window_samples:,} (CLEARSCAN_PREVIEW_MAX_WINDOW_SAMPLES): "
            f"use a step of at least {least:,} or a shorter window"
        )


def content_key(ds: Dataset) -> str:
    """What a dataset's preview depends on: its content hash, classes and stored description."""
    canon = json.dumps(
        {"hash": ds.content_hash, "classes": ds.classes, "info": ds.info},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(canon.encode()).hexdigest()


class PreviewCache:
    """A thread-safe LRU of computed previews; `hits` and `misses` count lookups."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached value of `key`, or `compute()` stored under it. Errors are not cached.
        Two requests that miss at once both compute (no lock is held while computing)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
