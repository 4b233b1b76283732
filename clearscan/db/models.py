"""Imports every ORM module so Base.metadata is complete (Alembic autogenerate, tests)."""

from clearscan.audit.models import AuditEvent, AuditHead
from clearscan.auth.models import (
    KnownLoginAddress,
    LoginFailure,
    RateLimitState,
    User,
    UserSession,
)
from clearscan.batches.models import BatchItem
from clearscan.cases.models import Case, Image, Prediction, Review
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.jobs.models import Job
from clearscan.registry.models import ModelState, ShadowResult

__all__ = [
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
    "Prediction",
    "RateLimitState",
    "Review",
    "ShadowResult",
    "User",
    "UserSession",
]
