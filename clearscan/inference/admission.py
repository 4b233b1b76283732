"""Admission control: how much expensive work one process takes on at once.

An :class:`Admission` is a counter of slots with a short, bounded queue in front of it.
:meth:`Admission.slot` takes a slot; when all are taken it waits, if fewer than ``queue`` others
already wait, at most ``wait_seconds``, for one to free; otherwise, or when the wait runs out, it
raises :class:`Busy` (503 with ``Retry-After``): a full server never queues requests, and their
memory, without bound, yet a burst slightly over the limit (which the model's micro-batcher turns
into larger batches) is served rather than refused. Two are built per process
(:class:`clearscan.state.AppState`): ``analysis`` around decoding + inference of an analysis
(``CLEARSCAN_MAX_CONCURRENT_ANALYSES``, queue ``CLEARSCAN_MAX_QUEUED_ANALYSES``) and ``upload``
around receiving a model, dataset or batch upload (``CLEARSCAN_MAX_CONCURRENT_UPLOADS``, taken by
the request middleware; no queue). The slots in use
and the refusals are exported as ``clearscan_in_flight{kind}`` and
``clearscan_busy_refusals_total{kind}``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from clearscan.errors import Unavailable

if TYPE_CHECKING:
    from clearscan.observability.metrics import Metrics

__all__ = ["Admission", "Busy"]


class Busy(Unavailable):
    """Every slot is taken: 503, try again after ``Retry-After`` seconds."""

    title = "Service unavailable"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class Admission:
    """At most ``limit`` holders at once, in this process, and at most ``queue`` more waiting up
    to ``wait_seconds`` each; ``kind`` names them in messages and metrics ("analysis",
    "upload")."""

    def __init__(
        self,
        kind: str,
        limit: int,
        *,
        queue: int = 0,
        wait_seconds: float = 0.0,
        retry_after: int = 5,
        setting: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("an admission limit is at least 1")
        if queue < 0 or wait_seconds < 0:
            raise ValueError("an admission queue and its wait are at least 0")
        self.kind = kind
        self.limit = limit
        self.queue = queue
        self.wait_seconds = wait_seconds
        self.retry_after = retry_after
        self.setting = setting
        self._metrics = metrics
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._held = 0
        self._waiting = 0
        self.refused = 0
        if metrics is not None:  # exported at 0 from the start
            metrics.in_flight.labels(kind)
            metrics.busy_refusals.labels(kind)

    @property
    def in_flight(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._waiting

    def try_acquire(self, *, wait: bool = False) -> bool:
        """Take a slot if one is free; with `wait`, queue for one (if the queue has room) for at
        most ``wait_seconds``. False when no slot was taken."""
        with self._lock:
            if self._held >= self.limit and wait and self._waiting < self.queue:
                deadline = time.monotonic() + self.wait_seconds
                self._waiting += 1
                try:
                    while self._held >= self.limit:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._freed.wait(left):
                            break
                finally:
                    self._waiting -= 1
            if self._held >= self.limit:
                self.refused += 1
                taken = False
            else:
                self._held += 1
                taken = True
        if self._metrics is not None:
            if taken:
                self._metrics.in_flight.labels(self.kind).inc()
            else:
                self._metrics.busy_refusals.labels(self.kind).inc()
        return taken

    def release(self) -> None:
        with self._lock:
            if self._held <= 0:
                raise RuntimeError(f"{self.kind} admission released more often than taken")
            self._held -= 1
            self._freed.notify()
        if self._metrics is not None:
            self._metrics.in_flight.labels(self.kind).dec()

    def busy(self) -> Busy:
        """The refusal to raise when no slot is free."""
        setting = f" ({self.setting})" if self.setting else ""
        queued = f" and {self.queue} waiting" if self.queue else ""
        return Busy(
            f"the server is busy: {self.limit} {self.kind} request(s) are already running{queued} "
            f"in this process{setting}; try again in {self.retry_after} s",
            self.retry_after,
        )

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block, queueing for one as the admission allows; Busy (503 +
        Retry-After) when none is free and the queue is full or the wait ran out."""
        if not self.try_acquire(wait=True):
            raise self.busy()
        try:
            yield
        finally:
            self.release()
