"""MicroBatcher: coalescing, ordering, shapes, explain flags, failures, close/drain, and identical
results to one-by-one runs on the bundled ONNX model.

Determinism: instead of racing threads against a timer, most tests "plug" the worker (the fake
model blocks inside its first run) while the items under test queue up, then open the gate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from pathlib import Path

import numpy as np
import pytest

from clearscan.inference.batching import ItemOutput, MicroBatcher
from clearscan.inference.manifest import load_manifest
from clearscan.inference.runtimes.onnx import OnnxModel
from clearscan.inference.types import BatchOutput
from tests.conftest import chest_like

BUNDLED = Path(__file__).resolve().parents[2] / "clearscan" / "bundled_models" / "pneumonia-cxr"
WAIT = 5.0  # generous upper bound for anything that should happen "now"


class FakeModel:
    """Records every batch. Item identity is its value v (all pixels equal v): probabilities are
    [v, -v], top is int(v) % 2, the map is the first channel times 10. A negative v raises."""

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[int, ...], bool, list[float]]] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = None

    def plug(self) -> threading.Event:
        """Make the next run block until the returned event is set."""
        self.entered.clear()
        self.gate = threading.Event()
        return self.gate

    def __call__(self, batch: np.ndarray, *, explain: bool) -> BatchOutput:
        values = [float(v) for v in batch.reshape(len(batch), -1)[:, 0]]
        self.batches.append((tuple(batch.shape), explain, values))
        gate, self.gate = self.gate, None
        self.entered.set()
        if gate is not None:
            assert gate.wait(WAIT)
        if any(v < 0 for v in values):
            raise ValueError(f"poisoned batch {values}")
        v = batch.reshape(len(batch), -1)[:, 0]
        return BatchOutput(
            probabilities=np.stack([v, -v], axis=1),
            top=np.array([int(x) % 2 for x in v]),
            cams=batch[:, 0] * 10 if explain else None,
            run_ms=1.5,
        )

    @property
    def sizes(self) -> list[int]:
        return [shape[0] for shape, _, _ in self.batches]


def img(v: float, size: int = 2, dtype: type = np.float32) -> np.ndarray:
    return np.full((1, size, size), v, dtype=dtype)


def check_own(out: ItemOutput, v: float, *, explain: bool, size: int = 2) -> None:
    np.testing.assert_array_equal(out.probabilities, [v, -v])
    assert out.top == int(v) % 2
    if explain:
        assert out.cam is not None
        np.testing.assert_array_equal(out.cam, np.full((size, size), v * 10))
    else:
        assert out.cam is None


def wait_pending(b: MicroBatcher, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while b.stats.pending < n:
        assert time.monotonic() < deadline, b.stats
        time.sleep(0.001)


@pytest.fixture
def fake() -> FakeModel:
    return FakeModel()


@pytest.fixture
def batcher_factory(fake: FakeModel) -> Iterator[object]:
    made: list[MicroBatcher] = []

    def make(**kw: object) -> MicroBatcher:
        b = MicroBatcher(fake, name="test", **kw)  # type: ignore[arg-type]
        made.append(b)
        return b

    yield make
    for b in made:
        b.close(timeout=WAIT)


def plugged(
    b: MicroBatcher, fake: FakeModel, n: int = 1
) -> tuple[Future[ItemOutput], threading.Event]:
    """Submit n plug items (values 1000, 1001...) and return once the worker is blocked running
    them as one batch."""
    gate = fake.plug()
    futures = [b.submit(img(1000.0 + i), explain=False) for i in range(n)]
    assert fake.entered.wait(WAIT)
    assert fake.sizes[-1] == n
    return futures[0], gate


def test_concurrent_submitters_are_coalesced_and_get_their_own_rows(fake, batcher_factory):
    b = batcher_factory(max_batch_size=4, max_delay_ms=2.0)
    plug, gate = plugged(b, fake)
    n = 10
    barrier = threading.Barrier(n)
    futures: dict[int, Future[ItemOutput]] = {}

    def client(i: int) -> None:
        barrier.wait()
        futures[i] = b.submit(img(float(i)), explain=True)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    wait_pending(b, n)
    gate.set()
    plug.result(WAIT)
    for i, f in futures.items():
        out = f.result(WAIT)
        check_own(out, float(i), explain=True)
        assert 1 <= out.batch_size <= 4 and out.run_ms == 1.5 and out.queue_ms >= 0
    assert fake.sizes == [1, 4, 4, 2]
    s = b.stats
    assert (s.batches, s.items, s.max_batch, s.pending) == (4, 11, 4, 0)
    assert s.histogram == {1: 1, 2: 1, 4: 2} and s.mean_batch == pytest.approx(11 / 4)


def test_free_running_threads_never_exceed_max_batch(fake, batcher_factory):
    """No plug: whatever the timing, every item gets its own row and batch sizes are bounded."""
    b = batcher_factory(max_batch_size=3, max_delay_ms=5.0)
    n = 12
    barrier = threading.Barrier(n)
    results: dict[int, ItemOutput] = {}

    def client(i: int) -> None:
        barrier.wait()
        results[i] = b.submit(img(float(i)), explain=i % 2 == 0).result(WAIT)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(results) == list(range(n))
    for i, out in results.items():
        check_own(out, float(i), explain=i % 2 == 0)
    assert sum(fake.sizes) == n and max(fake.sizes) <= 3


def test_waits_for_company_up_to_max_delay(fake, batcher_factory):
    b = batcher_factory(max_batch_size=8, max_delay_ms=40.0)
    f1 = b.submit(img(1.0), explain=False)
    time.sleep(0.005)
    f2 = b.submit(img(2.0), explain=False)
    o1, o2 = f1.result(WAIT), f2.result(WAIT)
    assert o1.batch_size == o2.batch_size == 2 and fake.sizes == [2]
    assert o1.queue_ms >= 35.0  # the deadline counts from the first item's arrival
    check_own(o1, 1.0, explain=False)
    check_own(o2, 2.0, explain=False)


def test_full_batch_goes_without_waiting_for_the_delay(fake, batcher_factory):
    b = batcher_factory(max_batch_size=2, max_delay_ms=60_000)
    t0 = time.monotonic()
    outs = b.predict([img(1.0), img(2.0)], explain=False, timeout=WAIT)
    assert time.monotonic() - t0 < WAIT and fake.sizes == [2]
    assert [o.batch_size for o in outs] == [2, 2]


def test_zero_delay_takes_what_is_queued_now(fake, batcher_factory):
    b = batcher_factory(max_batch_size=4, max_delay_ms=0)
    # sequential lone requests run alone, immediately
    for v in (1.0, 2.0, 3.0):
        check_own(b.submit(img(v), explain=False).result(WAIT), v, explain=False)
    assert fake.sizes == [1, 1, 1]
    # what queued up behind a running batch is taken together
    plug, gate = plugged(b, fake)
    futures = [b.submit(img(float(v)), explain=False) for v in range(6)]
    gate.set()
    for v, f in enumerate(futures):
        check_own(f.result(WAIT), float(v), explain=False)
    assert fake.sizes[3:] == [1, 4, 2]
    plug.result(WAIT)


def test_mixed_explain_flags_share_a_batch(fake, batcher_factory):
    b = batcher_factory(max_batch_size=8, max_delay_ms=0)
    _, gate = plugged(b, fake)
    futures = [b.submit(img(float(v)), explain=v % 2 == 1) for v in range(5)]
    gate.set()
    for v, f in enumerate(futures):
        check_own(f.result(WAIT), float(v), explain=v % 2 == 1)
    (shape, explain, values) = fake.batches[-1]
    assert shape[0] == 5 and explain and values == [0.0, 1.0, 2.0, 3.0, 4.0]
    # a batch where nobody asks for maps runs without explain
    b.predict([img(7.0), img(8.0)], explain=False, timeout=WAIT)
    assert fake.batches[-1][1] is False


def test_items_of_different_shapes_are_not_stacked(fake, batcher_factory):
    b = batcher_factory(max_batch_size=8, max_delay_ms=0)
    _, gate = plugged(b, fake)
    specs = [(0.0, 2, np.float32), (1.0, 3, np.float32), (2.0, 2, np.float32),
             (3.0, 3, np.float32), (4.0, 2, np.float64)]  # fmt: skip
    futures = [b.submit(img(v, s, d), explain=True) for v, s, d in specs]
    gate.set()
    for (v, s, _), f in zip(specs, futures, strict=True):
        check_own(f.result(WAIT), v, explain=True, size=s)
    groups = [(shape, values) for shape, _, values in fake.batches[1:]]
    # oldest head first: the 2x2 float32 group, then 3x3, then the float64 one
    assert groups == [
        ((2, 1, 2, 2), [0.0, 2.0]),
        ((2, 1, 3, 3), [1.0, 3.0]),
        ((1, 1, 2, 2), [4.0]),
    ]


def test_exception_fails_only_its_batch_and_the_worker_keeps_serving(fake, batcher_factory):
    b = batcher_factory(max_batch_size=2, max_delay_ms=0)
    _, gate = plugged(b, fake)
    bad = [b.submit(img(v), explain=False) for v in (5.0, -1.0)]  # one batch, poisoned
    good = [b.submit(img(v), explain=False) for v in (6.0, 7.0)]  # the next batch
    gate.set()
    for f in bad:
        with pytest.raises(ValueError, match="poisoned"):
            f.result(WAIT)
    for v, f in zip((6.0, 7.0), good, strict=True):
        check_own(f.result(WAIT), v, explain=False)
    check_own(b.submit(img(9.0), explain=True).result(WAIT), 9.0, explain=True)
    s = b.stats
    assert (s.failed_batches, s.failed_items) == (1, 2)
    with pytest.raises(ValueError, match="poisoned"):
        b.predict([img(-2.0)], explain=False, timeout=WAIT)


def test_wrong_row_count_from_the_model_fails_the_batch(batcher_factory):
    def short(batch: np.ndarray, *, explain: bool) -> BatchOutput:
        return BatchOutput(np.zeros((1, 2)), np.zeros(1, dtype=int), None, 0.1)

    b = MicroBatcher(short, max_batch_size=4, max_delay_ms=0)
    try:
        with pytest.raises(RuntimeError, match="rows for a batch of 2"):
            b.predict([img(1.0), img(2.0)], explain=False, timeout=WAIT)
        assert b.predict([img(1.0)], explain=False, timeout=WAIT)[0].batch_size == 1
    finally:
        b.close()


def test_close_drains_then_rejects(fake, batcher_factory):
    b = batcher_factory(max_batch_size=3, max_delay_ms=60_000)  # close must not wait the delay
    _, gate = plugged(b, fake, n=3)  # a full batch goes at once
    futures = [b.submit(img(float(v)), explain=False) for v in range(7)]
    closer = threading.Thread(target=b.close)
    closer.start()
    deadline = time.monotonic() + WAIT
    while not b.closed:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(img(1.0), explain=False)
    gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    for v, f in enumerate(futures):
        check_own(f.result(0), float(v), explain=False)
    assert fake.sizes == [3, 3, 3, 1]
    b.close()  # idempotent
    with pytest.raises(RuntimeError):
        b.predict([img(1.0)], explain=False)


def test_close_from_a_done_callback_does_not_deadlock(fake):
    b = MicroBatcher(fake, max_delay_ms=0)
    f = b.submit(img(1.0), explain=False)
    f.add_done_callback(lambda _: b.close())
    f.result(WAIT)
    (worker,) = b._threads
    worker.join(WAIT)
    assert b.closed and not worker.is_alive()


def test_cancelled_items_are_skipped(fake, batcher_factory):
    b = batcher_factory(max_batch_size=8, max_delay_ms=0)
    _, gate = plugged(b, fake)
    futures = [b.submit(img(float(v)), explain=False) for v in range(3)]
    assert futures[1].cancel()
    gate.set()
    check_own(futures[0].result(WAIT), 0.0, explain=False)
    check_own(futures[2].result(WAIT), 2.0, explain=False)
    with pytest.raises(CancelledError):
        futures[1].result(0)
    assert fake.batches[-1][2] == [0.0, 2.0] and b.stats.cancelled == 1


def test_predict_timeout_cancels_what_has_not_started(fake, batcher_factory):
    b = batcher_factory(max_batch_size=1, max_delay_ms=0)
    _, gate = plugged(b, fake)
    with pytest.raises(TimeoutError):
        b.predict([img(1.0), img(2.0)], explain=False, timeout=0.02)
    gate.set()
    b.close(timeout=WAIT)
    assert fake.sizes == [1]  # the two timed-out items were cancelled, never run
    assert b.stats.cancelled == 2


def test_bad_arguments():
    with pytest.raises(ValueError):
        MicroBatcher(FakeModel(), max_batch_size=0)
    with pytest.raises(ValueError):
        MicroBatcher(FakeModel(), max_delay_ms=-1)
    with MicroBatcher(FakeModel()) as b:
        with pytest.raises(ValueError, match="C x H x W"):
            b.submit(np.zeros((1, 1, 2, 2), np.float32), explain=False)
        assert b.predict([], explain=False) == []


def test_bundled_onnx_model_gives_identical_results_through_the_batcher():
    model = OnnxModel(BUNDLED, load_manifest(BUNDLED), threads=1)
    model.load()
    assert model.explainable
    xs = [chest_like(28, seed=s)[None] for s in range(11)]
    explain = [s % 3 != 0 for s in range(11)]
    with MicroBatcher(model.run, max_batch_size=4, max_delay_ms=1.0, name="pneumonia") as b:
        futures = [b.submit(x, explain=e) for x, e in zip(xs, explain, strict=True)]
        outs = [f.result(WAIT) for f in futures]
        assert b.stats.items == 11 and b.stats.max_batch <= 4
        outs_predict = b.predict(xs, explain=True, timeout=WAIT)
    for x, e, out, out2 in zip(xs, explain, outs, outs_predict, strict=True):
        ref = model.run(x[None], explain=True)
        assert ref.cams is not None
        np.testing.assert_allclose(out.probabilities, ref.probabilities[0], atol=1e-5)
        np.testing.assert_allclose(out2.probabilities, ref.probabilities[0], atol=1e-5)
        assert out.top == out2.top == int(ref.top[0])
        if e:
            assert out.cam is not None
            np.testing.assert_allclose(out.cam, ref.cams[0], atol=1e-5)
        else:
            assert out.cam is None
        assert out2.cam is not None
        np.testing.assert_allclose(out2.cam, ref.cams[0], atol=1e-5)
    assert [o.batch_size for o in outs_predict] == [4] * 8 + [3] * 3


# --- several workers: batches run in parallel -------------------------------------------------


class BarrierModel(FakeModel):
    """A FakeModel whose runs wait at a barrier: they only pass when `parties` run at once."""

    def __init__(self, parties: int, timeout: float = WAIT) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=timeout)
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray, *, explain: bool) -> BatchOutput:
        with self.lock:
            self.threads.add(threading.current_thread().name)
        self.barrier.wait()  # BrokenBarrierError unless the other runs are in flight too
        with self.lock:
            return super().__call__(batch, explain=explain)


def test_two_workers_run_two_batches_at_the_same_time():
    model = BarrierModel(2)
    b = MicroBatcher(model, max_batch_size=1, max_delay_ms=0, workers=2, name="par")
    try:
        outs = b.predict([img(2.0), img(3.0)], explain=True)
    finally:
        b.close(timeout=WAIT)
    check_own(outs[0], 2.0, explain=True)
    check_own(outs[1], 3.0, explain=True)
    assert len(model.threads) == 2 and b.stats.batches == 2 and b.stats.failed_batches == 0


def test_one_worker_never_runs_two_batches_at_once():
    model = BarrierModel(2, timeout=0.5)
    b = MicroBatcher(model, max_batch_size=1, max_delay_ms=0, name="serial")
    try:
        futures = [b.submit(img(v), explain=False) for v in (2.0, 3.0)]
        with pytest.raises(threading.BrokenBarrierError):
            futures[0].result(WAIT * 2)
    finally:
        model.barrier.abort()
        b.close(timeout=WAIT)


def test_many_workers_lose_and_duplicate_nothing():
    fake = FakeModel()
    b = MicroBatcher(fake, max_batch_size=4, max_delay_ms=1, workers=3, name="many")
    results: dict[float, ItemOutput] = {}
    lock = threading.Lock()

    def client(start: int) -> None:
        for v in range(start, start + 50):
            (out,) = b.predict([img(float(v))], explain=v % 2 == 0)
            with lock:
                results[float(v)] = out

    threads = [threading.Thread(target=client, args=(i * 1000,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    b.close(timeout=WAIT)
    assert len(results) == 300
    for v, out in results.items():
        check_own(out, v, explain=int(v) % 2 == 0)
    seen = [v for _, _, values in fake.batches for v in values]
    assert sorted(seen) == sorted(results)  # every item ran exactly once
    assert b.stats.items == 300 and b.stats.pending == 0
    assert not any(t.is_alive() for t in b._threads)


def test_close_with_several_workers_drains_queued_work():
    fake = FakeModel()
    b = MicroBatcher(fake, max_batch_size=2, max_delay_ms=50, workers=2, name="drain")
    futures = [b.submit(img(float(v)), explain=False) for v in range(7)]
    b.close(timeout=WAIT)
    for v, f in enumerate(futures):
        check_own(f.result(0), float(v), explain=False)
    assert not any(t.is_alive() for t in b._threads)
    with pytest.raises(RuntimeError):
        b.submit(img(1.0), explain=False)
