"""Anonymous denials (401s) are rate-limited in the chain, counted outside it.

A flood of unauthenticated requests would otherwise take the chain's head lock once per request
(serialising every writer behind it) and grow the trail without bound. Each process records the
first few denials of an interval as ordinary ``access.denied`` events (at most `per_key` per
(route, method, status, address prefix) and `per_interval` in all), counts the rest in memory
and writes them as one ``access.denied_summary`` event per interval (the busiest keys by name,
the rest as a total). Every denial is counted in the metrics
(``clearscan_anonymous_denials_total``). Memory is bounded: beyond `max_keys` distinct keys,
further ones are counted under one overflow key.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from clearscan.audit import service
from clearscan.audit.actions import Action

OVERFLOW = ("(other)", "", 0, "(other)")
TOP_KEYS = 50


def address_prefix(addr: str | None) -> str:
    """The /24 (IPv4) or /48 (IPv6) network of `addr`: enough to see where a flood comes
    from, one key per network instead of one per address."""
    if not addr:
        return "(unknown)"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "(unknown)"
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


Key = tuple[str, str, int, str]  # route, method, status, address prefix


class DenialCounter:
    def __init__(
        self,
        *,
        interval_s: float = 300.0,
        per_interval: int = 100,
        per_key: int = 10,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.per_interval = per_interval
        self.per_key = per_key
        self.max_keys = max_keys
        self._recorded: dict[Key, int] = {}
        self._recorded_total = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self._since = clock()
        self._since_wall = datetime.now(UTC)

    def note(self, *, route: str, method: str, status: int, addr: str | None) -> tuple[bool, bool]:
        """One denial: (record it as its own event, the interval is over and the counts are
        due a flush). A denial not recorded on its own is counted into the next summary."""
        key: Key = (route, method, status, address_prefix(addr))
        with self._lock:
            due = self._clock() - self._since >= self.interval_s
            done = self._recorded.get(key, 0)
            if (
                done < self.per_key
                and self._recorded_total < self.per_interval
                and (key in self._recorded or len(self._recorded) < self.max_keys)
            ):
                self._recorded[key] = done + 1
                self._recorded_total += 1
                return True, due
            if key not in self._counts and len(self._counts) >= self.max_keys:
                key = OVERFLOW
            self._counts[key] = self._counts.get(key, 0) + 1
            return False, due

    def pending(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def _take(self) -> tuple[dict[Key, int], datetime]:
        with self._lock:
            counts, since = self._counts, self._since_wall
            self._counts, self._since, self._since_wall = {}, self._clock(), datetime.now(UTC)
            self._recorded, self._recorded_total = {}, 0
        return counts, since

    def flush(self, *, db: Session) -> int:
        """Start a new interval; write the denials of the last one that were not recorded on
        their own as one summary event (none when there were none). Returns how many it
        summarised. Commits."""
        counts, since = self._take()
        total = sum(counts.values())
        if not total:
            return 0
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
        top = [
            {"route": r, "method": m, "status": s, "network": n, "count": c}
            for (r, m, s, n), c in ranked[:TOP_KEYS]
        ]
        entry = service.Entry(
            Action.ACCESS_DENIED_SUMMARY,
            outcome="denied",
            details={
                "from": since.isoformat(timespec="seconds"),
                "to": datetime.now(UTC).isoformat(timespec="seconds"),
                "total": total,  # not recorded as events of their own
                "recorded_limit": {"per_key": self.per_key, "per_interval": self.per_interval},
                "keys": len(counts),
                "top": top,
                "others": sum(c for _, c in ranked[TOP_KEYS:]),
            },
        )
        try:
            service.record(entry, db=db, ctx=service.RequestContext(actor=None))
        except Exception:
            with self._lock:  # not lost: counted again into the next summary
                for k, c in counts.items():
                    self._counts[k] = self._counts.get(k, 0) + c
            raise
        return total
