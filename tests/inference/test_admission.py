"""Admission control: a bounded number of holders, a short bounded queue, then 503."""

from __future__ import annotations

import threading

import pytest

from clearscan.inference.admission import Admission, Busy


def _hold(adm: Admission, entered: threading.Event, release: threading.Event) -> threading.Thread:
    def run() -> None:
        with adm.slot():
            entered.set()
            assert release.wait(30)

    t = threading.Thread(target=run)
    t.start()
    assert entered.wait(30)
    return t


def test_without_a_queue_a_full_admission_refuses_at_once() -> None:
    adm = Admission("analysis", 1, queue=0, wait_seconds=30, retry_after=7, setting="X_LIMIT")
    entered, release = threading.Event(), threading.Event()
    holder = _hold(adm, entered, release)
    try:
        with pytest.raises(Busy) as refused, adm.slot():
            pass
        assert refused.value.headers == {"Retry-After": "7"}
        assert "X_LIMIT" in refused.value.detail
        assert adm.refused == 1
    finally:
        release.set()
        holder.join(30)
    with adm.slot():  # freed
        assert adm.in_flight == 1
    assert adm.in_flight == 0


def test_a_waiting_request_gets_the_slot_when_it_frees() -> None:
    adm = Admission("analysis", 1, queue=1, wait_seconds=30)
    entered, release = threading.Event(), threading.Event()
    holder = _hold(adm, entered, release)
    got: list[int] = []
    waiting = threading.Thread(target=lambda: got.append(adm.try_acquire(wait=True)))
    waiting.start()
    try:
        for _ in range(3000):  # until it waits (no sleep-based assertion: poll the state)
            if adm.waiting == 1:
                break
            threading.Event().wait(0.01)
        assert adm.waiting == 1 and got == []
        # the queue holds one: a third caller is refused without waiting
        with pytest.raises(Busy), adm.slot():
            pass
    finally:
        release.set()
        holder.join(30)
    waiting.join(30)
    assert got == [True] and adm.in_flight == 1 and adm.waiting == 0
    adm.release()
    assert adm.refused == 1


def test_a_wait_that_runs_out_is_refused() -> None:
    adm = Admission("analysis", 1, queue=4, wait_seconds=0.05)
    entered, release = threading.Event(), threading.Event()
    holder = _hold(adm, entered, release)
    try:
        with pytest.raises(Busy), adm.slot():
            pass
        assert adm.waiting == 0 and adm.refused == 1
    finally:
        release.set()
        holder.join(30)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission("analysis", 0)
    with pytest.raises(ValueError, match="at least 0"):
        Admission("analysis", 1, queue=-1)
