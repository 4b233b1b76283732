"""The batch tests that depend on the database's transactions, run again on the real PostgreSQL
server (127.0.0.1:5432): acceptance in one transaction, the idempotency key's unique constraint,
exactly one case per image after kills, the lease fence, racing runners and cancelling."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clearscan.config import Settings
from tests.batches.test_batches_api import (  # noqa: F401 (collected here, on PostgreSQL)
    test_a_bad_archive_is_refused_and_nothing_is_stored,
    test_a_crash_before_the_commit_leaves_no_batch,
    test_a_key_committed_by_a_racing_request_wins,
    test_an_archive_is_accepted_at_once_and_each_image_becomes_a_case,
    test_the_same_idempotency_key_returns_the_same_batch,
)
from tests.batches.test_runner import (  # noqa: F401
    queued_batch,
    test_a_killed_worker_process_and_a_second_delivery_make_one_case_per_image,
    test_a_run_killed_mid_batch_and_delivered_again_makes_one_case_per_image,
    test_a_runner_that_loses_the_race_for_an_item_rolls_its_case_back,
    test_a_runner_that_lost_its_lease_writes_no_case,
    test_cancel_stops_a_running_batch_before_its_next_image,
)
from tests.conftest import pg_available, pg_database


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    """The usual settings, on a fresh PostgreSQL database."""
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    with pg_database(settings) as pg:
        yield pg


@pytest.fixture
def no_worker(app, client) -> None:
    app.state.clearscan.jobs.stop()


def test_these_tests_run_on_postgres(app):
    assert app.state.clearscan.engine.dialect.name == "postgresql"
