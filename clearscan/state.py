"""Everything the running app holds: built once by create_app, reached through request.app.state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from clearscan.audit.denials import DenialCounter
from clearscan.auth.service import LoginLimiter
from clearscan.auth.throttle import RateLimits
from clearscan.config import Settings
from clearscan.imaging import Limits
from clearscan.inference.admission import Admission
from clearscan.jobs.delivery import JobQueue
from clearscan.observability.metrics import Metrics
from clearscan.registry.cache import ModelCache
from clearscan.registry.routing import ModelRegistry
from clearscan.registry.store import ModelStore
from clearscan.storage import BlobStore


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    registry: ModelRegistry
    model_cache: ModelCache  # the registry's loaded versions (capped by the settings)
    store: ModelStore
    metrics: Metrics
    limiter: LoginLimiter  # failed logins, counted in the throttle store
    secret: str
    jobs: JobQueue | None = None  # the in-process worker, or Celery delivery
    started_at: float = field(default_factory=time.time)
    # request-rate limits (predictions, sign-ins), counted in the same store as `limiter`
    rate_limits: RateLimits | None = None
    # per-process caps on analyses (decoding + inference) and uploads running at once (503 when
    # full); built from the settings
    analyses: Admission = field(init=False)
    uploads: Admission = field(init=False)
    # unauthenticated denials, counted here and written to the audit chain as summaries
    denials: DenialCounter = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.denials = DenialCounter(interval_s=s.audit_denial_flush_seconds)
        self.analyses = Admission(
            "analysis",
            s.max_concurrent_analyses,
            queue=s.max_queued_analyses,
            wait_seconds=s.analysis_queue_seconds,
            retry_after=s.busy_retry_after_seconds,
            setting="CLEARSCAN_MAX_CONCURRENT_ANALYSES",
            metrics=self.metrics,
        )
        self.uploads = Admission(
            "upload",
            s.max_concurrent_uploads,
            retry_after=s.busy_retry_after_seconds,
            setting="CLEARSCAN_MAX_CONCURRENT_UPLOADS",
            metrics=self.metrics,
        )

    @property
    def limits(self) -> Limits:
        return self.settings.image_limits()
