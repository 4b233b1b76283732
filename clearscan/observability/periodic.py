"""A background thread that runs one check now and then every `interval_s` (e.g. the audit
hash-chain verification, whose result the metrics export)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicCheck:
    def __init__(self, name: str, check: Callable[[], None], interval_s: float) -> None:
        self.name = name
        self.check = check
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # logged; the next round tries again
                log.exception("periodic check %s failed", self.name)
            self._stop.wait(self.interval_s)
