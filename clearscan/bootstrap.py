"""Build what a running ClearScan holds, for the app, the CLI and the job worker alike: the data
directory and schema, the model store and registry, the application state and the job handlers."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from clearscan.audit import service as audit
from clearscan.audit import upkeep as audit_upkeep
from clearscan.audit.actions import Action
from clearscan.auth import service as users
from clearscan.auth.service import LoginLimiter
from clearscan.auth.throttle import RateLimits, open_store
from clearscan.config import ConfigError, Settings
from clearscan.db import create_db_engine, make_session_factory
from clearscan.db.migrate import upgrade
from clearscan.inference.base import auto_parallel_runs
from clearscan.inference.runtimes.onnx import onnx_providers
from clearscan.inference.types import ModelLoadError
from clearscan.jobs.delivery import InProcessWorker, JobQueue
from clearscan.jobs.service import Handler, JobContext, queue_snapshot
from clearscan.jobs.worker import WorkerState
from clearscan.observability.metrics import Metrics
from clearscan.observability.periodic import PeriodicCheck
from clearscan.registry.cache import ModelCache
from clearscan.registry.catalog import BUNDLED_DIR
from clearscan.registry.routing import ModelRegistry
from clearscan.registry.store import ModelStore
from clearscan.state import AppState
from clearscan.storage import BlobError, BlobStore, LocalBlobStore

log = logging.getLogger(__name__)


def initialise(settings: Settings) -> str | None:
    """Create the data dir, secret and schema; create `admin` on first start.
    Returns the generated admin password when one was generated (print it once)."""
    settings.check_production()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blob_store(settings)  # a wrong CLEARSCAN_BLOB_URL or a missing bucket stops start-up here
    upgrade(settings.sqlalchemy_url)
    audit.install(settings)  # the audit key and anchor sinks of this database
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with make_session_factory(engine)() as db:
            generated = users.ensure_admin(db=db, password=settings.admin_password)
            audit_upkeep.startup(db=db)
            return generated
    finally:
        engine.dispose()


def blob_store(settings: Settings) -> BlobStore:
    """The blob store CLEARSCAN_BLOB_URL names (default: files under the data dir). An S3 store
    is checked here: a bucket that is missing or unreachable is a ConfigError naming it, and so
    is an install without boto3 (the `s3` extra)."""
    where = settings.blob_location()
    if where.path is not None:
        return LocalBlobStore(where.path)
    try:
        from clearscan.storage.s3 import S3BlobStore

        secret = settings.s3_secret_access_key
        store = S3BlobStore(
            where.bucket,
            where.prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
        )
    except ImportError as exc:
        raise ConfigError(
            f"CLEARSCAN_BLOB_URL={settings.blob_url} needs boto3, which this install lacks: "
            f"pip install 'clearscan[s3]' (the `s3` extra) ({exc})"
        ) from None
    try:
        store.check_writable()
    except BlobError as exc:
        raise ConfigError(f"CLEARSCAN_BLOB_URL={settings.blob_url}: {exc.detail}") from None
    return store


def model_store(settings: Settings) -> ModelStore:
    return ModelStore(
        settings.models_dir or settings.data_dir / "models",
        max_package_bytes=int(settings.max_model_upload_mb * 2**20),
    )


def check_device(device: str) -> None:
    """CLEARSCAN_DEVICE=cuda on a machine without the CUDA execution provider stops start-up
    (a quiet fall-back to the CPU would hide a tenfold slow-down)."""
    try:
        onnx_providers(device)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from None


def build_registry(
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    *,
    cache: ModelCache | None = None,
) -> ModelRegistry:
    """The registry over the bundled models and the model store, loading into `cache` (a new
    one, capped by CLEARSCAN_MODEL_CACHE_MB, when none is given)."""
    dirs = [BUNDLED_DIR, model_store(settings).root]
    check_device(settings.device)
    if cache is None:
        cache = ModelCache()
    cache.resize(int(settings.model_cache_mb * 2**20))
    registry = ModelRegistry(
        dirs,
        sessions=sessions,
        threads=settings.intra_op_threads,
        device=settings.device,
        parallel_runs=settings.parallel_runs or auto_parallel_runs(settings.device),
        cache=cache,
    )
    registry.load_all()
    return registry


def build_state(settings: Settings, *, model_cache: ModelCache | None = None) -> AppState:
    """The state of a serving process (schema already initialised): database, blobs, models,
    metrics, the login limiter and rate limits (their counts shared through the throttle store)
    and the in-process job worker (not started).

    `model_cache` holds the loaded versions; by default a new one, owned by this state alone.
    Apps built side by side in one process (tests) may share one: it is keyed by the version's
    folder and weights hash, so a shared cache never serves one app another's model."""
    audit.install(settings)
    engine = create_db_engine(settings.sqlalchemy_url)
    sessions = make_session_factory(engine)
    if model_cache is None:
        model_cache = ModelCache()
    throttle = open_store(settings, engine)  # login failures and request rates, shared
    state = AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        blobs=blob_store(settings),
        registry=build_registry(settings, sessions, cache=model_cache),
        model_cache=model_cache,
        store=model_store(settings),
        metrics=Metrics(),
        limiter=LoginLimiter(
            max_failures=settings.login_max_failures,
            window_seconds=settings.login_window_seconds,
            backoff_max_seconds=settings.login_backoff_max_seconds,
            known_days=settings.login_known_address_days,
            secret=settings.resolved_secret_key,
            store=throttle,
        ),
        secret=settings.resolved_secret_key,
        rate_limits=RateLimits.from_settings(settings, throttle),
    )
    audit_unavailable_models(state)
    handlers = job_handlers(state)
    state.jobs = job_queue(settings, state, handlers)
    state.metrics.track_jobs(handlers, lambda: queue_snapshot(sessions=sessions))
    return state


def job_queue(settings: Settings, state: AppState, handlers: dict[str, Handler]) -> JobQueue:
    """Celery when CLEARSCAN_BROKER_URL is set (this process then runs no jobs), else the
    in-process worker."""
    if settings.broker_url:
        from clearscan.jobs.celery_queue import CeleryQueue

        return CeleryQueue(settings, state.sessions)
    return InProcessWorker(
        state.sessions, handlers, metrics=state.metrics, lease_s=settings.job_lease_seconds
    )


def build_worker_state(settings: Settings) -> WorkerState:
    """What a `clearscan worker` pool process needs: the full state, and the job handlers."""
    state = build_state(settings)
    return WorkerState(sessions=state.sessions, handlers=job_handlers(state), metrics=state.metrics)


def audit_check(state: AppState) -> PeriodicCheck:
    """Verify the audit chain now and every CLEARSCAN_AUDIT_CHECK_INTERVAL_SECONDS (the metrics
    export the verdict), then anchor its head and archive what is past the retention period."""

    def check() -> None:
        audit_upkeep.check(
            sessions=state.sessions,
            settings=state.settings,
            on_verified=lambda r: state.metrics.audit_verified(ok=r.ok, checked=r.checked),
            before=lambda: flush_denials(state),
        )

    interval = state.settings.audit_check_interval_seconds
    return PeriodicCheck("clearscan-audit-verify", check, interval)


def audit_anchoring(state: AppState) -> PeriodicCheck:
    """Anchor the audit chain's head to the anchor file every CLEARSCAN_AUDIT_ANCHOR_INTERVAL_
    SECONDS when it moved (checking the events since the last anchor): the window in which a
    deleted tail would go unnoticed is that interval, not the audit check's."""
    from clearscan.audit.anchors import AnchorError

    def anchor() -> None:
        with state.sessions() as db:
            try:
                audit.anchor_head(db=db)
            except AnchorError as exc:  # the audit check reports the break (metric, alert)
                log.error("audit head not anchored: %s", exc)

    interval = state.settings.audit_anchor_interval_seconds
    return PeriodicCheck("clearscan-audit-anchor", anchor, interval)


def backup_schedule(state: AppState) -> PeriodicCheck | None:
    """Submit a `backup` job per CLEARSCAN_BACKUP_SCHEDULE_HOURS slot (None when unscheduled).
    A malformed CLEARSCAN_BACKUP_KEY or destination stops start-up here."""
    from clearscan.backup import options, schedule
    from clearscan.backup.errors import BackupError

    hours = state.settings.backup_schedule_hours
    if not hours:
        return None
    try:
        options.key(state.settings)
        options.destination(state.settings)
    except BackupError as exc:
        raise ConfigError(exc.detail) from None
    check = schedule.scheduler(sessions=state.sessions, queue=lambda: state.jobs, hours=hours)
    return PeriodicCheck("clearscan-backup-schedule", check, schedule.check_every_s(hours))


STAGING_GRACE_S = 3600.0
"""Staged inputs younger than this are never swept: their submission may not have committed."""
STAGING_SWEEP_S = 3600.0


def sweep_staging(state: AppState, *, grace_s: float = STAGING_GRACE_S) -> int:
    """Delete the staged inputs (raw uploads of batches and dataset imports) that no job still
    to run needs: those of jobs that ended while their runner could not discard them (a worker
    killed on its last attempt, a batch cancelled before it ran). Returns how many."""
    from clearscan.batches.runner import staged_in_use as batch_inputs
    from clearscan.datasets.jobs import staged_in_use as import_inputs

    candidates = state.blobs.staged_keys(grace_s)
    if not candidates:
        return 0
    with state.sessions() as db:
        needed = batch_inputs(db) | import_inputs(db)
    gone = [key for key in candidates if key not in needed]
    for key in gone:
        state.blobs.discard_staged(key)
    if gone:
        log.info("staging sweep: deleted %d staged inputs no job needs", len(gone))
    return len(gone)


def staging_sweep(state: AppState) -> PeriodicCheck:
    def sweep() -> None:
        sweep_staging(state)

    return PeriodicCheck("clearscan-staging-sweep", sweep, STAGING_SWEEP_S)


def flush_denials(state: AppState) -> None:
    """Write the anonymous denials counted so far as one audit summary event (if any)."""
    if state.denials.pending():
        with state.sessions() as db:
            state.denials.flush(db=db)


def job_handlers(state: AppState) -> dict[str, Handler]:
    """The job kinds this process runs (the in-process worker; Celery workers later)."""
    from clearscan.batches.runner import BATCH_KIND, run_batch
    from clearscan.cases.shadow import SHADOW_KIND, run_shadow
    from clearscan.training.evaluation import EVAL_KIND, run_evaluation
    from clearscan.training.runs import TRAIN_KIND, run_training

    def train(ctx: JobContext) -> dict[str, Any]:
        return run_training(
            ctx,
            sessions=state.sessions,
            blobs=state.blobs,
            store=state.store,
            on_registered=lambda name, version: state.registry.discover(),
        )

    def evaluate(ctx: JobContext) -> dict[str, Any]:
        return run_evaluation(
            ctx, sessions=state.sessions, blobs=state.blobs, registry=state.registry
        )

    def batch(ctx: JobContext) -> dict[str, Any]:
        return run_batch(
            ctx,
            sessions=state.sessions,
            registry=state.registry,
            blobs=state.blobs,
            limits=state.limits,
            default_model=state.settings.default_model,
            deid=state.settings.deid_policy(),
            metrics=state.metrics,
        )

    from clearscan.datasets.jobs import DATASET_IMPORT_KIND, run_import

    def dataset_import(ctx: JobContext) -> dict[str, Any]:
        return run_import(
            ctx,
            sessions=state.sessions,
            blobs=state.blobs,
            tmp_dir=state.settings.data_dir,
            limits=state.limits,
            max_bytes=int(state.settings.max_dataset_upload_mb * 2**20),
            deid=state.settings.deid_policy(),
        )

    def shadow(ctx: JobContext) -> dict[str, Any]:
        return run_shadow(
            ctx,
            sessions=state.sessions,
            blobs=state.blobs,
            registry=state.registry,
            limits=state.limits,
        )

    from clearscan.backup import options
    from clearscan.backup.schedule import BACKUP_KIND, run_backup_job

    def backup(ctx: JobContext) -> dict[str, Any]:
        settings = state.settings
        return run_backup_job(
            ctx,
            database_url=settings.sqlalchemy_url,
            blobs=state.blobs,
            models_root=state.store.root,
            data_dir=settings.data_dir,
            location=options.destination(settings),
            key=options.key(settings),
            keep=settings.backup_retention,
            max_age_days=settings.backup_retention_days,
        )

    return {
        BACKUP_KIND: backup,
        TRAIN_KIND: train,
        EVAL_KIND: evaluate,
        BATCH_KIND: batch,
        DATASET_IMPORT_KIND: dataset_import,
        SHADOW_KIND: shadow,
    }


def audit_unavailable_models(state: AppState) -> None:
    """A version that failed to load at start-up is an audit event as well as a log line."""
    failed = [e for n in state.registry.names() for e in state.registry.versions(n) if e.error]
    if not failed:
        return
    with state.sessions() as db:
        audit.record(
            *[
                audit.Entry(
                    Action.MODEL_UNAVAILABLE,
                    outcome="failure",
                    object_type="model",
                    object_id=e.manifest.ref,
                    details={"error": (e.error or "")[:500]},
                )
                for e in failed
            ],
            db=db,
            ctx=audit.RequestContext(actor="system"),
        )
