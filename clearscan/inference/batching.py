"""Dynamic micro-batching in front of one loaded model version.

Concurrent requests each submit one image (C x H x W); worker threads coalesce them into
N x C x H x W batches so the model runs once for many requests. One worker by default; with
`workers` > 1 that many batches may run at once (for a model that runs batches in parallel
better than it runs one batch on all cores: see OnnxModel's parallel runs).

A worker takes the oldest waiting item, then waits for more items of the same shape until
`max_delay_ms` has passed *since that item arrived* or `max_batch_size` such items are waiting,
whichever comes first:

* Under load no extra delay is paid: items that queued up while the previous batch ran are
  already past their deadline and go out at once, as one batch.
* A request arriving at an idle batcher waits at most `max_delay_ms` for company.
  `max_delay_ms=0` means no waiting at all: take what is queued now.
* Items of different shapes (or dtypes) are never stacked together; each shape forms its own
  batches, oldest head first, so one shape cannot starve another.
* Items with and without `explain` share a batch; the batch runs with explain=True if any item
  asked for it, and the maps are dropped for the items that did not.
* An exception raised by `run` fails exactly the futures of that batch; the worker keeps serving.
* `close()` drains everything already submitted (no more waiting for company), then stops the
  worker; later `submit` calls raise RuntimeError.

Only stdlib, numpy and `clearscan.inference.types`: `run` is any callable shaped like `Model.run`.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clearscan.inference.types import BatchOutput, ItemOutput

log = logging.getLogger(__name__)

__all__ = ["BatcherStats", "ItemOutput", "MicroBatcher", "RunBatch"]


class RunBatch(Protocol):
    """`Model.run`'s shape: N x C x H x W batch in, BatchOutput out."""

    def __call__(self, batch: np.ndarray, *, explain: bool) -> BatchOutput: ...


@dataclass(frozen=True)
class BatcherStats:
    """Snapshot of a batcher's counters (for metrics and benchmarks)."""

    batches: int = 0  # batches run (successful or not)
    items: int = 0  # items in those batches
    failed_batches: int = 0
    failed_items: int = 0
    cancelled: int = 0  # items whose future was cancelled before their batch ran
    max_batch: int = 0  # largest batch run
    histogram: dict[int, int] = field(default_factory=dict)  # batch size -> batches
    run_ms_total: float = 0.0
    queue_ms_total: float = 0.0  # summed over items
    pending: int = 0  # items submitted and not yet taken into a batch

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    @property
    def mean_queue_ms(self) -> float:
        return self.queue_ms_total / self.items if self.items else 0.0


@dataclass
class _Item:
    seq: int
    x: np.ndarray
    explain: bool
    arrived: float  # time.perf_counter() at submit
    future: Future[ItemOutput]


class MicroBatcher:
    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int = 8,
        max_delay_ms: float = 2.0,
        name: str = "",
        workers: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if not (math.isfinite(max_delay_ms) and max_delay_ms >= 0):
            raise ValueError("max_delay_ms must be a finite number >= 0")
        self.name = name
        self.max_batch_size = int(max_batch_size)
        self.max_delay_ms = float(max_delay_ms)
        self._run = run
        self._delay_s = self.max_delay_ms / 1000.0
        self._cond = threading.Condition(threading.Lock())
        # one FIFO per (shape, dtype); the oldest head across FIFOs is served first
        self._queues: dict[Hashable, deque[_Item]] = {}
        self._pending = 0
        self._seq = itertools.count()
        self._closed = False
        # counters (updated by the worker under the lock)
        self._batches = 0
        self._items = 0
        self._failed_batches = 0
        self._failed_items = 0
        self._cancelled = 0
        self._max_batch = 0
        self._hist: dict[int, int] = {}
        self._run_ms = 0.0
        self._queue_ms = 0.0
        self._threads = [
            threading.Thread(
                target=self._worker, name=f"clearscan-batcher-{name or id(self)}-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    # ---------------------------------------------------------------- public API

    def submit(self, x: np.ndarray, *, explain: bool) -> Future[ItemOutput]:
        """Queue one C x H x W image; the future resolves to its ItemOutput. Thread-safe.

        The array is not copied: do not modify it until the future is done."""
        return self._enqueue([x], explain)[0]

    def predict(
        self, xs: Sequence[np.ndarray], *, explain: bool, timeout: float | None = None
    ) -> list[ItemOutput]:
        """Submit all images at once and wait for their outputs (in order).

        `timeout` bounds the whole call; on expiry the items not yet started are cancelled and
        TimeoutError is raised. An exception from the model is re-raised."""
        futures = self._enqueue(list(xs), explain)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            out = []
            for f in futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                out.append(f.result(left))
            return out
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, run everything already submitted, then stop the workers.

        Idempotent. Safe to call from a future's done-callback (runs on a worker thread): then
        it does not wait for that worker to finish."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> BatcherStats:
        with self._cond:
            return BatcherStats(
                batches=self._batches,
                items=self._items,
                failed_batches=self._failed_batches,
                failed_items=self._failed_items,
                cancelled=self._cancelled,
                max_batch=self._max_batch,
                histogram=dict(sorted(self._hist.items())),
                run_ms_total=self._run_ms,
                queue_ms_total=self._queue_ms,
                pending=self._pending,
            )

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MicroBatcher(name={self.name!r}, max_batch_size={self.max_batch_size}, "
            f"max_delay_ms={self.max_delay_ms}, workers={len(self._threads)}, "
            f"closed={self._closed})"
        )

    # ---------------------------------------------------------------- internals

    def _enqueue(self, xs: list[np.ndarray], explain: bool) -> list[Future[ItemOutput]]:
        arrays = [np.asarray(x) for x in xs]
        for a in arrays:
            if a.ndim != 3:
                raise ValueError(f"expected one C x H x W image, got shape {list(a.shape)}")
        now = time.perf_counter()
        futures: list[Future[ItemOutput]] = []
        with self._cond:
            if self._closed:
                raise RuntimeError(f"batcher {self.name!r} is closed")
            for a in arrays:
                fut: Future[ItemOutput] = Future()
                item = _Item(next(self._seq), a, bool(explain), now, fut)
                self._queues.setdefault((a.shape, a.dtype.str), deque()).append(item)
                futures.append(fut)
            self._pending += len(arrays)
            if arrays:
                self._cond.notify()
        return futures

    def _oldest_key(self) -> Hashable | None:
        best: Hashable | None = None
        best_seq = -1
        for key, q in self._queues.items():
            if best is None or q[0].seq < best_seq:
                best, best_seq = key, q[0].seq
        return best

    def _take(self) -> list[_Item] | None:
        """Block until a batch is ready; None once closed and drained."""
        with self._cond:
            # Re-read the queues after every wait: another worker may have taken items.
            while True:
                key = self._oldest_key()
                if key is None:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                q = self._queues[key]
                left = q[0].arrived + self._delay_s - time.perf_counter()
                if not self._closed and len(q) < self.max_batch_size and left > 0:
                    self._cond.wait(left)
                    continue
                items = [q.popleft() for _ in range(min(len(q), self.max_batch_size))]
                if not q:
                    del self._queues[key]
                self._pending -= len(items)
                if self._queues:  # more is waiting: let an idle worker look at it
                    self._cond.notify()
                return items

    def _worker(self) -> None:
        try:
            while True:
                items = self._take()
                if items is None:
                    return
                self._run_batch(items)
        except BaseException:  # a bug here must not leave callers waiting forever
            log.exception("batcher %r worker crashed", self.name)
            raise
        finally:
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        with self._cond:
            self._closed = True
            leftovers = [it for q in self._queues.values() for it in q]
            self._queues.clear()
            self._pending = 0
        for it in leftovers:
            if it.future.set_running_or_notify_cancel():
                it.future.set_exception(RuntimeError(f"batcher {self.name!r} stopped"))

    def _run_batch(self, items: list[_Item]) -> None:
        live = [it for it in items if it.future.set_running_or_notify_cancel()]
        cancelled = len(items) - len(live)
        if not live:
            with self._cond:
                self._cancelled += cancelled
            return
        n = len(live)
        explain = any(it.explain for it in live)
        start = time.perf_counter()
        try:
            batch = np.stack([it.x for it in live])
            out = self._run(batch, explain=explain)
            _check_output(out, n)
        except BaseException as exc:
            self._record(n, cancelled, live, start, run_ms=0.0, failed=True)
            for it in live:
                it.future.set_exception(exc)
            if not isinstance(exc, Exception):  # KeyboardInterrupt / SystemExit: stop
                raise
            return
        run_ms = float(out.run_ms)
        self._record(n, cancelled, live, start, run_ms=run_ms, failed=False)
        probs = np.asarray(out.probabilities)
        top = np.asarray(out.top)
        cams = out.cams
        maps = out.maps
        for i, it in enumerate(live):
            cam = None
            if it.explain and cams is not None:
                cam = np.array(cams[i], copy=True)
            it.future.set_result(
                ItemOutput(
                    probabilities=probs[i].copy(),
                    top=int(top[i]),
                    cam=cam,
                    run_ms=run_ms,
                    batch_size=n,
                    queue_ms=(start - it.arrived) * 1000.0,
                    ood_score=None if out.ood_scores is None else float(out.ood_scores[i]),
                    map=None if maps is None else np.array(maps[i], copy=True),
                )
            )

    def _record(
        self,
        n: int,
        cancelled: int,
        live: list[_Item],
        start: float,
        *,
        run_ms: float,
        failed: bool,
    ) -> None:
        with self._cond:
            self._batches += 1
            self._items += n
            self._cancelled += cancelled
            self._max_batch = max(self._max_batch, n)
            self._hist[n] = self._hist.get(n, 0) + 1
            self._run_ms += run_ms
            self._queue_ms += sum(start - it.arrived for it in live) * 1000.0
            if failed:
                self._failed_batches += 1
                self._failed_items += n


def _check_output(out: BatchOutput, n: int) -> None:
    """Refuse to hand out rows if the output does not have one row per item."""
    rows = {"probabilities": len(out.probabilities), "top": len(out.top)}
    if out.cams is not None:
        rows["cams"] = len(out.cams)
    if out.maps is not None:
        rows["maps"] = len(out.maps)
    bad = {k: v for k, v in rows.items() if v != n}
    if bad:
        raise RuntimeError(f"model returned {bad} rows for a batch of {n}")
