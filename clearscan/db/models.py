"""Imports every ORM module so Base.metadata is complete (Alembic autogenerate, tests)."""

from clearscan.audit.models import AuditEvent, AuditHead
from clearscan.auth.models import (
    ApiKey,
    KnownLoginAddress,
    LoginFailure,
    RateLimitState,
    User,
    UserSession,
)
from clearscan.batches.models import BatchItem
from clearscan.cases.models import Case, Image, OriginalImage, Prediction, Review
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.jobs.models import Job
from clearscan.registry.models import ModelState, ShadowResult
from clearscan.teams.models import Team, TeamMember

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "BatchItem",
    "Case",
    "Dataset",
    "DatasetItem",
    "Image",
    "Job",
    "KnownLoginAddress",
    "LoginFailure",
    "ModelState",
    "OriginalImage",
    "Prediction",
    "RateLimitState",
    "Review",
    "ShadowResult",
    "Team",
    "TeamMember",
    "User",
    "UserSession",
]
