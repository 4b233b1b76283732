"""Everything the running app holds: built once by create_app, reached through request.app.state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from clearscan.auth.service import LoginLimiter
from clearscan.config import Settings
from clearscan.imaging import Limits
from clearscan.jobs.service import InProcessWorker
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
    limiter: LoginLimiter
    secret: str
    jobs: InProcessWorker | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def limits(self) -> Limits:
        return self.settings.image_limits()
