"""Settings: one object, read from CLEARSCAN_* environment variables (and DATABASE_URL).

Tests build their own `Settings(...)`; nothing mutates a settings object after start-up.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_MARKERS = {"", "changethis", "changeme", "secret", "insecure"}
SECRET_KEY_FILE = "secret_key"  # noqa: S105 (a file name)
PSEUDONYM_KEY_FILE = "pseudonym_key"  # the HMAC key of de-identification (a file name)
AUDIT_KEY_FILE = "audit_key"  # the audit chain's HMAC key in embedded mode
# The password policy of every account (API, CLI and the bootstrap admin): its length.
PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 256


if TYPE_CHECKING:
    from clearscan.imaging import Limits
    from clearscan.imaging.deid import DeidPolicy


class ConfigError(RuntimeError):
    """The settings cannot be used to start the server."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLEARSCAN_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("./clearscan-data")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CLEARSCAN_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default: SQLite file in the data dir.",
    )
    secret_key: str | None = None
    # when set, GET /metrics needs `Authorization: Bearer <token>` (Prometheus: bearer_token)
    metrics_token: str | None = Field(default=None, min_length=16)
    admin_password: str | None = None
    default_model: str = "pneumonia-cxr"
    models_dir: Path | None = None

    max_upload_mb: float = 50.0
    max_pixels: int = 64_000_000
    max_volume_voxels: int = Field(default=512_000_000, gt=0)
    max_dimension: int = 30_000
    max_files_per_request: int = 32
    # memory decoding may hold (bytes, not pixels: channels, bit depth, DICOM frames and the
    # float32 copies count), per image and for all the files of one analysis request together
    max_decoded_mb: float = Field(default=1024.0, gt=0)
    max_request_decoded_mb: float = Field(default=8192.0, gt=0)
    # analyses (decoding + inference) one process runs at once; up to max_queued_analyses more
    # wait at most analysis_queue_seconds for a slot; beyond that: 503 + Retry-After
    max_concurrent_analyses: int = Field(default=4, ge=1, le=1024)
    max_queued_analyses: int = Field(default=16, ge=0, le=4096)
    analysis_queue_seconds: float = Field(default=10.0, ge=0, le=600)
    # model, dataset and batch uploads one process receives at once; more answer 503
    max_concurrent_uploads: int = Field(default=4, ge=1, le=1024)
    # the Retry-After of those 503 replies
    busy_retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    # the feature preview of a table dataset: rows it reads, and for a sensor stream the
    # samples its windows cover (about rows / step x window length); over either: 422
    preview_max_rows: int = Field(default=1_000_000, ge=1)
    preview_max_window_samples: int = Field(default=20_000_000, ge=1)
    max_model_upload_mb: float = 2048.0
    max_dataset_upload_mb: float = 4096.0

    access_token_minutes: int = 60
    session_minutes: int = 480
    # failed logins for one username from one address before each further attempt waits
    # 1 s, 2 s, 4 s ... (at most login_backoff_max_seconds); a failure counts for the window
    login_max_failures: int = Field(default=5, ge=1)
    login_window_seconds: int = Field(default=86400, ge=1)
    login_backoff_max_seconds: int = Field(default=900, ge=1)
    # an address a user signed in from is remembered this long: the right password from it is
    # never refused by the back-off
    login_known_address_days: float = Field(default=30.0, ge=0)

    # --- rate limits and state shared by many API processes ---
    # requests per minute (a burst of that many, then an even rate); 0: no limit. Refused
    # requests answer 429 with Retry-After before their body is read. Analyses are not limited
    # by default: what a server can take depends on its hardware and its scripted clients.
    rate_limit_predict_per_user: int = Field(default=0, ge=0)
    rate_limit_predict_per_address: int = Field(default=0, ge=0)
    rate_limit_login_per_address: int = Field(default=60, ge=0)
    # where the login-failure and rate-limit counts live: auto = Redis when a Redis URL is known
    # (CLEARSCAN_REDIS_URL, else a redis:// broker URL), else the database on PostgreSQL, else
    # this process's memory (SQLite serves from one process)
    rate_limit_store: Literal["auto", "memory", "database", "redis"] = "auto"
    redis_url: str | None = None  # redis://host:6379/0 (the `queue` extra installs the client)
    # SIGTERM: stop accepting, let requests in flight finish for up to this long, then stop
    shutdown_grace_seconds: float = Field(default=25.0, gt=0)

    cors_origins: list[str] = Field(default_factory=list)
    # development: auto = Secure cookies over HTTPS, always = Secure + HSTS, never; production:
    # always Secure __Host- cookies and HSTS, and `never` is refused (clearscan.api.cookies)
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    trusted_proxies: list[str] = Field(default_factory=list)

    intra_op_threads: int = Field(default=0, ge=0)
    # batches of one model version that may run at once on the CPU, each in its own ONNX Runtime
    # session on cores / N threads (a batch running alone uses all cores); 0: auto (2 with two or
    # more cores, 1 on a GPU); 1: off
    parallel_runs: int = Field(default=0, ge=0, le=64)
    # cpu, or cuda: ONNX Runtime's CUDA execution provider (onnxruntime-gpu) and PyTorch on the
    # GPU; a cuda setting that cannot be honoured stops start-up instead of falling back quietly
    device: Literal["cpu", "cuda"] = "cpu"
    # memory cap of loaded model versions (weights file sizes); least recently used unload first
    model_cache_mb: float = Field(default=4096.0, gt=0)
    log_level: str = "INFO"

    # --- de-identification of DICOM uploads (PS3.15 Annex E Basic profile; docs/security.md) ---
    deidentify: bool = True  # off only where a site must store DICOM exactly as received
    # the HMAC key of pseudonymous patient keys, replacement UIDs and date shifts; production:
    # required (32+ characters); embedded: generated into <data dir>/pseudonym_key
    pseudonym_key: SecretStr | None = None
    # shift: dates moved by a per-patient offset; keep: dates as received; remove: Basic profile
    deid_dates: Literal["shift", "keep", "remove"] = "shift"
    # keep each DICOM upload as received, readable by admins only (audited)
    keep_originals: bool = False
    # refuse analysis of images marked BurnedInAnnotation=YES (they are flagged either way)
    refuse_burned_in: bool = False

    # where blobs (uploads, heatmaps, dataset items) live: unset = <data dir>/blobs;
    # s3://bucket/prefix (the `s3` extra) or file:///path
    blob_url: str | None = None
    s3_endpoint_url: str | None = None  # MinIO, Ceph...; unset: AWS
    s3_region: str | None = None  # unset: the AWS environment / config
    s3_access_key_id: str | None = None  # unset: the standard AWS credential chain
    s3_secret_access_key: SecretStr | None = None

    # --- audit trail (docs/security.md) ---
    # HMAC key of the audit chain (at least 32 characters), kept outside the database; required
    # in production; unset in development: <data dir>/audit_key (0600, generated on first use)
    audit_key: SecretStr | None = None
    # keys of earlier rotations (JSON list): the events they signed still verify
    audit_previous_keys: list[SecretStr] = Field(default_factory=list)
    # the append-only file the chain head is anchored to (unset: <data dir>/audit-anchors.log)
    audit_anchor_file: Path | None = None
    audit_anchor_syslog: bool = False  # also send each anchor to syslog (LOG_AUTHPRIV)
    # where: a Unix socket path, or udp://host:port / tcp://host:port of a log collector
    audit_anchor_syslog_address: str = "/dev/log"
    # s3://bucket/prefix in a bucket with Object Lock: each anchor is an object retained so long
    audit_anchor_s3_url: str | None = None
    audit_anchor_retention_days: int = Field(default=2190, ge=1)
    # the head is anchored to the file this often when it moved (events after the last anchor
    # can be deleted undetected: this is that window)
    audit_anchor_interval_seconds: float = Field(default=60.0, ge=1, le=86400)
    # the audit check (verify, then anchor) runs at start-up and then this often
    audit_check_interval_seconds: float = Field(default=3600.0, ge=10)
    # where `clearscan audit archive` writes archived events (unset: <data dir>/audit-archive)
    audit_archive_dir: Path | None = None
    # events older than this many days are archived by the audit check; 0: only on demand
    audit_retention_days: int = Field(default=0, ge=0, le=36500)
    # anonymous (401) denials are counted per route and address prefix and written to the
    # chain as one summary event per key and interval, not one event per request
    audit_denial_flush_seconds: float = Field(default=300.0, ge=1, le=86400)

    # jobs: unset = the in-process worker of `serve`; redis://host:6379/0 or amqp://user@host//
    # = Celery workers (`clearscan worker`, the `queue` extra); the API then runs no jobs itself
    broker_url: str | None = None
    # a running job whose heartbeat is older than this lost its runner: a sweep queues it again
    job_lease_seconds: float = Field(default=60.0, ge=1.0, le=3600.0)
    # a queued job no worker took for this long is delivered again (a broker lost its message)
    job_redeliver_seconds: float = Field(default=120.0, ge=1.0)
    # Redis: an unacknowledged job message returns to the queue after this long; keep it above
    # the longest job (training runs) or long jobs are delivered twice (the second is refused)
    broker_visibility_timeout_seconds: int = Field(default=43200, ge=60)
    # which Celery queue carries each job kind, e.g. {"train": "gpu"} (JSON); others: "default"
    job_routes: dict[str, str] = Field(default_factory=dict)

    # --- backups (docs/operations.md) ---
    # where `clearscan backup create` and scheduled backups go: a folder or s3://bucket/prefix
    # (the CLEARSCAN_S3_* settings reach it); unset: <data dir>/backups (same disk: copy it off)
    backup_to: str | None = None
    # 32 random bytes, base64 or hex (`clearscan backup keygen`): backups are encrypted with it
    # (AES-256-GCM); unset: not encrypted
    backup_key: SecretStr | None = None
    # a backup job every N hours (slots from midnight UTC), run by the job system; 0: none
    backup_schedule_hours: float = Field(default=0.0, ge=0, le=24 * 366)
    # after each scheduled backup keep the newest N (0: no count limit) ...
    backup_retention: int = Field(default=7, ge=0)
    # ... and delete those older than N days (0: no age limit); the newest is always kept
    backup_retention_days: float = Field(default=0.0, ge=0)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL for SQLAlchemy. The common `postgres://` / `postgresql://` forms
        (Heroku, Kubernetes secrets) mean psycopg 3, the driver of the `postgres` extra;
        SQLAlchemy would otherwise look for psycopg2."""
        if self.database_url:
            scheme, sep, rest = self.database_url.partition("://")
            if sep and scheme in ("postgres", "postgresql"):
                return f"postgresql+psycopg://{rest}"
            return self.database_url
        return f"sqlite:///{self.data_dir / 'clearscan.db'}"

    def image_limits(self) -> Limits:
        """The decoder's caps (pixel bombs, NIfTI volumes) from these settings."""
        from clearscan.imaging import Limits

        return Limits(
            max_pixels=self.max_pixels,
            max_dimension=self.max_dimension,
            max_volume_voxels=self.max_volume_voxels,
            max_decoded_bytes=int(self.max_decoded_mb * 2**20),
            max_request_decoded_bytes=int(self.max_request_decoded_mb * 2**20),
        )

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def blob_location(self) -> BlobLocation:
        """Where the blob store lives, from CLEARSCAN_BLOB_URL; ConfigError when unusable."""
        url = (self.blob_url or "").strip()
        if not url:
            return BlobLocation(path=self.blob_dir)
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if sep and scheme == "file":
            if not rest.startswith("/") or rest == "/":
                raise ConfigError(
                    f"CLEARSCAN_BLOB_URL={url!r} must name an absolute path (file:///srv/blobs)."
                )
            return BlobLocation(path=Path(rest).expanduser().resolve())
        if not sep or scheme != "s3":
            raise ConfigError(
                f"CLEARSCAN_BLOB_URL={url!r} is not usable: give s3://bucket/prefix, "
                "file:///path, or leave it unset for the data dir."
            )
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"CLEARSCAN_BLOB_URL={url!r} names no bucket (s3://bucket/prefix).")
        if not _BUCKET.match(bucket):
            raise ConfigError(f"CLEARSCAN_BLOB_URL={url!r}: {bucket!r} is not a valid bucket name.")
        return BlobLocation(bucket=bucket, prefix=prefix.strip("/"))

    @cached_property
    def resolved_secret_key(self) -> str:
        """The signing key. Production: must be set and not a default. Embedded: stored in the
        data dir (0600), generated on first use."""
        key = self.secret_key
        if key is not None and key.strip().lower() not in DEFAULT_SECRET_MARKERS and len(key) >= 32:
            return key
        if self.environment == "production":
            raise ConfigError(
                "CLEARSCAN_SECRET_KEY is missing, a default value or shorter than 32 characters; "
                "production mode refuses to start without a real secret."
            )
        if key is not None and key.strip():
            raise ConfigError(
                "CLEARSCAN_SECRET_KEY is a default value or shorter than 32 characters."
            )
        return _load_or_create_secret(self.data_dir / SECRET_KEY_FILE)

    @cached_property
    def resolved_audit_key(self) -> str:
        """The audit chain's HMAC key. Production: must be set (at least 32 characters, not a
        default). Embedded: stored in the data dir (0600), generated on first use."""
        value = self.audit_key.get_secret_value() if self.audit_key is not None else None
        usable = value is not None and value.strip().lower() not in DEFAULT_SECRET_MARKERS
        if value is not None and usable and len(value) >= 32:
            return value
        if self.environment == "production":
            raise ConfigError(
                "CLEARSCAN_AUDIT_KEY is missing, a default value or shorter than 32 characters; "
                "production mode refuses to start without a real audit key (keep it outside "
                "the database and its backups)."
            )
        if value is not None and value.strip():
            raise ConfigError(
                "CLEARSCAN_AUDIT_KEY is a default value or shorter than 32 characters."
            )
        return _load_or_create_secret(self.data_dir / AUDIT_KEY_FILE)

    @cached_property
    def resolved_pseudonym_key(self) -> bytes:
        """The de-identification key (pseudonymous patient keys, replacement UIDs, date
        shifts). Production: must be set and not a default. Embedded: stored in the data dir
        (0600), generated on first use. Changing it unlinks new uploads from earlier ones."""
        raw = self.pseudonym_key.get_secret_value() if self.pseudonym_key is not None else None
        if raw is not None and raw.strip().lower() not in DEFAULT_SECRET_MARKERS and len(raw) >= 32:
            return raw.encode()
        if self.environment == "production":
            raise ConfigError(
                "CLEARSCAN_PSEUDONYM_KEY is missing, a default value or shorter than 32 "
                "characters; production mode refuses to start without a real key."
            )
        if raw is not None and raw.strip():
            raise ConfigError(
                "CLEARSCAN_PSEUDONYM_KEY is a default value or shorter than 32 characters."
            )
        return _load_or_create_secret(self.data_dir / PSEUDONYM_KEY_FILE).encode()

    def deid_policy(self) -> DeidPolicy:
        """What de-identification does with DICOM uploads, from these settings."""
        from clearscan.imaging.deid import DeidPolicy

        return DeidPolicy(
            key=self.resolved_pseudonym_key,
            enabled=self.deidentify,
            dates=self.deid_dates,
            keep_originals=self.keep_originals,
            refuse_burned_in=self.refuse_burned_in,
        )

    def check_production(self) -> None:
        """Raise ConfigError when the settings are unsafe for production."""
        _ = self.resolved_secret_key
        _ = self.resolved_pseudonym_key
        _ = self.resolved_audit_key
        if self.environment != "production":
            return
        if "*" in self.cors_origins:
            raise ConfigError("CORS origin '*' is not allowed in production.")
        if self.secure_cookies == "never":
            raise ConfigError(
                "CLEARSCAN_SECURE_COOKIES=never is not allowed in production: production always "
                "sends Secure __Host- cookies and HSTS (serve it over HTTPS; leave the setting "
                "unset, auto or always)."
            )
        if self.admin_password is not None:
            problem = password_problem(self.admin_password)
            if problem:
                raise ConfigError(
                    f"CLEARSCAN_ADMIN_PASSWORD breaks the password policy: {problem}; "
                    "production mode refuses to start with it."
                )


def password_problem(password: str) -> str | None:
    """Which rule of the password policy `password` breaks, or None when it obeys them all."""
    if len(password) < PASSWORD_MIN_LENGTH:
        return f"a password needs at least {PASSWORD_MIN_LENGTH} characters"
    if len(password) > PASSWORD_MAX_LENGTH:
        return f"a password may have at most {PASSWORD_MAX_LENGTH} characters"
    return None


@dataclass(frozen=True)
class BlobLocation:
    """A local directory (`path`) or an S3 bucket and key prefix."""

    path: Path | None = None
    bucket: str = ""
    prefix: str = ""


_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{1,253}[A-Za-z0-9]$")


def _load_or_create_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key
