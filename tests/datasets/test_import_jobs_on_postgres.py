"""The dataset-import job tests that depend on the database's transactions, run again on the real
PostgreSQL server (127.0.0.1:5432): the dataset and the job's end in one commit after kills, the
idempotency key's unique constraint, a bad dataset failing the job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clearscan.config import Settings
from tests.conftest import pg_available, pg_database
from tests.datasets.test_import_jobs import (  # noqa: F401 (collected here, on PostgreSQL)
    test_a_bad_dataset_fails_the_job_with_the_synchronous_reason_and_imports_nothing,
    test_a_killed_run_leaves_one_dataset_and_a_succeeded_job,
    test_an_idempotency_key_names_one_import,
    test_async_import_is_202_and_makes_what_a_synchronous_import_makes,
)


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    """The usual settings, on a fresh PostgreSQL database."""
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    with pg_database(settings) as pg:
        yield pg


def test_these_tests_run_on_postgres(app):
    assert app.state.clearscan.engine.dialect.name == "postgresql"
