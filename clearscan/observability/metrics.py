"""Prometheus metrics, one registry per app (tests build many apps in one process).

Labels stay bounded: model names and versions, job kinds and statuses, routes (templates, not
paths), HTTP statuses. Never an id, a user or anything about a patient. docs/monitoring.md lists
every metric and the alerts built on them (deploy/prometheus/rules.yml).

Many API processes behind one port (`clearscan serve --workers N`) run in prometheus-client's
multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set before the process starts, counters,
histograms and the audit gauges live in per-process files of that folder, and whichever process
answers a scrape reads them all: counters and histograms are summed over every process that
ever ran since the folder was emptied, the audit gauges report the latest value of a live
process. What is computed at scrape time (the job queue from the database, model availability,
storage writability) is reported once, by the answering process, and never written to a file,
so nothing is counted twice."""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from clearscan.observability.multiproc import MULTIPROC_ENV

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Jobs train and evaluate models: seconds to hours.
_JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800)
JOB_STATUSES = ("succeeded", "failed", "cancelled")


def multiprocess_dir() -> str | None:
    """The multiprocess folder when this process runs in multiprocess mode. prometheus-client
    decides that when it is first imported, from the same variable."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_ENV)
    return path if path and getattr(values.ValueClass, "_multiprocess", False) else None


_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def prune_dead_processes(path: str) -> list[int]:
    """Drop the live-gauge files of processes that are gone (one killed without a chance to
    say so): their gauges must not be reported. Counters and histograms stay: their counts
    happened. Returns the pids dropped."""
    dead = set()
    for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        m = _LIVE_FILE.match(os.path.basename(f))
        if m and not _alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        mark_process_dead(pid, path)
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class _FilesCollector(MultiProcessCollector):
    """prometheus-client's collector of the multiprocess files, pruning dead processes first."""

    def collect(self) -> Iterable[Metric]:
        prune_dead_processes(self._path)
        return super().collect()


def files_registry(path: str) -> CollectorRegistry:
    """A registry that reads every process's multiprocess files in `path` at each scrape (what
    a job worker's metrics endpoint serves for its pool processes)."""
    registry = CollectorRegistry()
    _FilesCollector(registry, path)
    return registry


class ScrapeGauge(Collector):
    """A gauge the process answering a scrape sets just before collecting (model availability,
    storage writability): reported by that process alone, never through the multiprocess files,
    so it is neither duplicated per process nor left stale by a process that exited."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> _ScrapeGaugeChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        return _ScrapeGaugeChild(self, tuple(str(v) for v in values))

    def set(self, value: float) -> None:
        self._set((), value)

    def _set(self, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._values[key] = float(value)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            for key, value in self._values.items():
                family.add_metric(list(key), value)
        yield family


@dataclass(frozen=True)
class _ScrapeGaugeChild:
    gauge: ScrapeGauge
    key: tuple[str, ...]

    def set(self, value: float) -> None:
        self.gauge._set(self.key, value)


@dataclass(frozen=True)
class JobQueueRow:
    """One (kind, status) group of unfinished jobs, as the jobs table holds it now."""

    kind: str
    status: str  # queued | running
    count: int
    oldest_age_s: float  # age of the oldest job of the group (since it was queued)


JobQueueSnapshot = Callable[[], Sequence[JobQueueRow]]
"""Reads the jobs table (the domain passes it in: this package imports no domain code)."""


class JobQueueCollector(Collector):
    """Queue depth and age computed at scrape time from the jobs table, the one place that is
    right whichever process queued or runs a job (a gauge a worker kept would only know its own
    jobs, and would go stale when that worker dies)."""

    def __init__(self, snapshot: JobQueueSnapshot, kinds: Iterable[str] = ()) -> None:
        self.snapshot = snapshot
        self.kinds = tuple(kinds)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "clearscan_jobs",
                "Jobs not finished yet, by kind and status (queued, running), from the jobs table",
                labels=["kind", "status"],
            ),
            GaugeMetricFamily(
                "clearscan_jobs_oldest_queued_seconds",
                "Age of the oldest job still queued, by kind (0 when none is queued)",
                labels=["kind"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        try:
            rows = list(self.snapshot())
        except Exception as exc:  # a scrape must not fail because the database does
            log.warning("job queue metrics unavailable: %s", type(exc).__name__)
            return
        depth, oldest = self._families()
        seen = {(r.kind, r.status): r for r in rows}
        kinds = sorted({*self.kinds, *(r.kind for r in rows)})
        for kind in kinds:
            for status in ("queued", "running"):
                row = seen.get((kind, status))
                depth.add_metric([kind, status], row.count if row else 0)
            queued = seen.get((kind, "queued"))
            oldest.add_metric([kind], queued.oldest_age_s if queued else 0.0)
        yield depth
        yield oldest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # what GET /metrics exposes
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir:
            # the values live in files; the registry reads every process's files at a scrape
            _FilesCollector(self.registry, self.multiprocess_dir)
        own = None if self.multiprocess_dir else self.registry
        self.requests = Counter(
            "clearscan_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "clearscan_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=own,
        )
        self.predictions = Counter(
            "clearscan_predictions_total",
            "Predictions made",
            ["model", "version", "label"],
            registry=own,
        )
        self.inference = Histogram(
            "clearscan_inference_seconds",
            "Preprocessing + model + explanation time per image",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=own,
        )
        self.batch_size = Histogram(
            "clearscan_inference_batch_size",
            "Size of the micro-batch each image ran in (one observation per image)",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=own,
        )
        self.ood_checked = Counter(
            "clearscan_ood_checked_total",
            "Predictions checked against the model's out-of-domain reference",
            ["model", "version"],
            registry=own,
        )
        self.out_of_domain = Counter(
            "clearscan_out_of_domain_total",
            "Predictions flagged out of domain (score > 1)",
            ["model", "version"],
            registry=own,
        )
        self.rejected = Counter(
            "clearscan_uploads_rejected_total",
            "Uploads rejected",
            ["status"],
            registry=own,
        )
        self.in_flight = Gauge(
            "clearscan_in_flight",
            "Requests holding a slot of a per-process concurrency limit now: analysis "
            "(decoding + inference), upload (model, dataset and batch uploads)",
            ["kind"],
            registry=own,
            multiprocess_mode="livesum",
        )
        self.busy_refusals = Counter(
            "clearscan_busy_refusals_total",
            "Requests answered 503 + Retry-After because every slot of their concurrency limit "
            "was taken",
            ["kind"],
            registry=own,
        )
        self.models_available = ScrapeGauge(  # set by GET /metrics before it collects
            "clearscan_model_available", "1 when the model can serve", ["model", "version"]
        )
        self.registry.register(self.models_available)
        self.jobs_finished = Counter(
            "clearscan_jobs_finished_total",
            "Jobs that ended, by kind and final status (succeeded, failed, cancelled)",
            ["kind", "status"],
            registry=own,
        )
        self.job_duration = Histogram(
            "clearscan_job_duration_seconds",
            "Run time of a job, from its claim to its end",
            ["kind", "status"],
            buckets=_JOB_BUCKETS,
            registry=own,
        )
        self.storage_errors = Counter(
            "clearscan_storage_errors_total",
            "Blob store failures: 'request' when a request failed on one, 'check' when a "
            "health or readiness probe found the store not writable",
            ["source"],
            registry=own,
        )
        for source in ("request", "check"):
            self.storage_errors.labels(source)  # exported at 0 from the start
        self.storage_writable = ScrapeGauge(
            "clearscan_storage_writable",
            "1 when the blob store accepted a probe write at the last scrape",
        )
        self.registry.register(self.storage_writable)
        self.anonymous_denials = Counter(
            "clearscan_anonymous_denials_total",
            "Requests refused 401 without a known user (counted here; the audit trail gets one "
            "summary event per interval, not one event each)",
            ["route"],
            registry=own,
        )
        # Every API process verifies the chain; with many, the latest verdict of a live one
        self.audit_chain_ok = Gauge(
            "clearscan_audit_chain_ok",
            "1 when the last audit hash-chain verification passed, 0 when it found a break "
            "(NaN until the first one)",
            registry=own,
            multiprocess_mode="livemostrecent",
        )
        self.audit_chain_ok.set(float("nan"))  # no verdict yet is not a broken chain
        self.audit_chain_verified = Gauge(
            "clearscan_audit_chain_verified_timestamp_seconds",
            "Unix time of the last audit hash-chain verification (0: none yet)",
            registry=own,
            multiprocess_mode="livemax",
        )
        self.audit_chain_events = Gauge(
            "clearscan_audit_chain_events",
            "Events checked by the last audit hash-chain verification",
            registry=own,
            multiprocess_mode="livemostrecent",
        )

    def observe_prediction(
        self,
        *,
        model: str,
        version: str,
        label: str,
        seconds: float,
        ood_score: float | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Count one prediction: its label, time, batch and out-of-domain verdict."""
        self.predictions.labels(model, version, label).inc()
        self.inference.labels(model, version).observe(seconds)
        if batch_size is not None:
            self.batch_size.labels(model, version).observe(batch_size)
        if ood_score is not None:
            self.ood_checked.labels(model, version).inc()
            flagged = self.out_of_domain.labels(model, version)  # exists at 0 from the first
            if ood_score > 1.0:
                flagged.inc()

    def track_jobs(self, kinds: Iterable[str], snapshot: JobQueueSnapshot | None = None) -> None:
        """Export a zero for every (kind, final status) so rates exist before the first job
        ends, and, given `snapshot`, the queue depth and age read from the jobs table."""
        kinds = tuple(kinds)
        for kind in kinds:
            for status in JOB_STATUSES:
                self.jobs_finished.labels(kind, status)
                self.job_duration.labels(kind, status)
        if snapshot is not None:
            self.registry.register(JobQueueCollector(snapshot, kinds))

    def job_finished(self, kind: str, status: str, seconds: float | None) -> None:
        self.jobs_finished.labels(kind, status).inc()
        if seconds is not None:
            self.job_duration.labels(kind, status).observe(max(seconds, 0.0))

    def audit_verified(self, *, ok: bool, checked: int) -> None:
        self.audit_chain_ok.set(1 if ok else 0)
        self.audit_chain_events.set(checked)
        self.audit_chain_verified.set(time.time())

    def close(self) -> None:
        """This process stops serving: in multiprocess mode its live gauges stop counting."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)
