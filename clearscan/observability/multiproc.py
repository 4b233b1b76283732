"""The folder prometheus-client's multiprocess mode keeps its per-process files in, prepared
before the processes that share it start. This module imports no prometheus-client: the client
chooses multiprocess mode when it is first imported, so the variable must be set before that
(a worker's pool processes are forked from the process that sets it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def shared_metrics_dir(prefix: str = "clearscan-metrics-") -> Iterator[Path]:
    """PROMETHEUS_MULTIPROC_DIR when set, else a new temporary folder (removed afterwards),
    emptied first: counts of an earlier run must not add up with this one's. The variable is
    set for this process and the processes it starts, and unset again afterwards."""
    given = os.environ.get(MULTIPROC_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if not given:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)
