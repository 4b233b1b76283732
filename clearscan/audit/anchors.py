"""Anchors: the chain head (sequence number, hash, time) written outside the database.

Sinks: an append-only file (opened O_APPEND, one JSON line per anchor, each line HMAC'd with a
sub-key of the audit key), syslog (write-only, for a remote log collector), and an S3 object per
anchor with Object Lock retention. Verification reads the file's latest line (and the newest S3
anchor where configured): a chain whose head lies behind it, or whose event at the anchored
sequence number has another hash, lost or rewrote its tail.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from clearscan.audit.keys import Keyring

if TYPE_CHECKING:
    from clearscan.config import Settings

ANCHOR_PURPOSE = b"anchor"
ANCHOR_FIELDS = ("seq", "hash", "at", "key_id")


class AnchorError(Exception):
    """An anchor could not be read or written, or it does not match the chain."""


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    at: str
    key_id: str

    def fields(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "at": self.at, "key_id": self.key_id}


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str
    retention_days: int
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def key_for(self, anchor: Anchor) -> str:
        name = f"anchors/{anchor.seq:015d}-{anchor.at.replace(':', '')}.json"
        return f"{self.prefix}/{name}" if self.prefix else name


@dataclass(frozen=True)
class AnchorConfig:
    file: Path
    syslog: bool = False
    s3: S3Target | None = None
    syslog_address: str = "/dev/log"

    @classmethod
    def from_settings(cls, settings: Settings) -> AnchorConfig:
        from clearscan.config import ConfigError

        s3 = None
        if settings.audit_anchor_s3_url:
            url = settings.audit_anchor_s3_url.strip()
            scheme, sep, rest = url.partition("://")
            bucket, _, prefix = rest.partition("/")
            if not sep or scheme.lower() != "s3" or not bucket:
                raise ConfigError(
                    f"CLEARSCAN_AUDIT_ANCHOR_S3_URL={url!r} is not usable: give s3://bucket/prefix"
                )
            secret = settings.s3_secret_access_key
            s3 = S3Target(
                bucket=bucket,
                prefix=prefix.strip("/"),
                retention_days=settings.audit_anchor_retention_days,
                endpoint_url=settings.s3_endpoint_url,
                region=settings.s3_region,
                access_key_id=settings.s3_access_key_id,
                secret_access_key=secret.get_secret_value() if secret else None,
            )
        file = settings.audit_anchor_file or settings.data_dir / "audit-anchors.log"
        address = settings.audit_anchor_syslog_address.strip()
        try:
            syslog_target(address)
        except ValueError as exc:
            raise ConfigError(f"CLEARSCAN_AUDIT_ANCHOR_SYSLOG_ADDRESS: {exc}") from None
        return cls(
            file=file.expanduser().resolve(),
            syslog=settings.audit_anchor_syslog,
            s3=s3,
            syslog_address=address,
        )


_lock = threading.Lock()
_by_url: dict[str, AnchorConfig] = {}


def register(url: str, config: AnchorConfig | None) -> None:
    key = make_url(url).render_as_string(True)
    with _lock:
        if config is None:
            _by_url.pop(key, None)
        else:
            _by_url[key] = config


def config_for(db: Session) -> AnchorConfig | None:
    bind = db.get_bind()
    if not isinstance(bind, Engine | Connection):  # pragma: no cover
        return None
    return _by_url.get(bind.engine.url.render_as_string(hide_password=True))


# --- the file -----------------------------------------------------------------------------


def _line_mac(keyring: Keyring, fields: dict[str, Any]) -> str:
    key = keyring.get(str(fields["key_id"]))
    if key is None:
        raise AnchorError(f"anchor signed with an unknown audit key {fields['key_id']}")
    body = json.dumps({k: fields[k] for k in ANCHOR_FIELDS}, sort_keys=True, separators=(",", ":"))
    return key.mac(ANCHOR_PURPOSE, body.encode())


def make_anchor(keyring: Keyring, seq: int, hash_: str) -> Anchor:
    at = datetime.now(UTC).isoformat(timespec="seconds")
    return Anchor(seq=seq, hash=hash_, at=at, key_id=keyring.current.key_id)


def line_of(keyring: Keyring, anchor: Anchor) -> str:
    fields = anchor.fields()
    fields["mac"] = _line_mac(keyring, fields)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def parse_line(keyring: Keyring, line: str, where: str) -> Anchor:
    import hmac

    try:
        fields = json.loads(line)
        anchor = Anchor(
            seq=int(fields["seq"]),
            hash=str(fields["hash"]),
            at=str(fields["at"]),
            key_id=str(fields["key_id"]),
        )
        mac = str(fields["mac"])
    except (ValueError, KeyError, TypeError):
        raise AnchorError(f"{where}: not an anchor line") from None
    if not hmac.compare_digest(_line_mac(keyring, anchor.fields()), mac):
        raise AnchorError(f"{where}: the anchor's MAC does not match (the line was edited)")
    return anchor


def append_file(path: Path, line: str) -> None:
    """Append one line: O_APPEND (never a seek, never a truncation), fsync'd, created 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def append_if_newer(path: Path, keyring: Keyring, anchor: Anchor, line: str) -> bool:
    """Append `line` unless the file already anchors a later head (another process anchored
    meanwhile): under an exclusive lock, so the anchored heads never go back."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        latest = read_file(keyring, path)
        if latest is not None and latest.seq > anchor.seq:
            return False
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
        return True
    finally:
        os.close(fd)  # releases the lock


def read_file(keyring: Keyring, path: Path) -> Anchor | None:
    """The file's latest anchor after checking every line (MAC, sequence numbers never going
    back); None when the file is empty. AnchorError on a tampered line; FileNotFoundError."""
    latest: Anchor | None = None
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            anchor = parse_line(keyring, raw.strip(), f"{path.name} line {n}")
            if latest is not None and anchor.seq < latest.seq:
                raise AnchorError(f"{path.name} line {n}: the anchored head went back")
            latest = anchor
    return latest


# --- syslog and S3 --------------------------------------------------------------------------


def syslog_target(address: str) -> tuple[str | tuple[str, int], int]:
    """(address, socket type) for SysLogHandler: a Unix socket path (`/dev/log`), or
    `udp://host:port` / `tcp://host:port` for a log collector. ValueError names the problem."""
    import socket

    scheme, sep, rest = address.partition("://")
    if not sep:
        if not address.startswith("/"):
            raise ValueError(f"{address!r} is neither a socket path nor udp:// or tcp://")
        return address, socket.SOCK_DGRAM
    host, _, port = rest.rpartition(":")
    if scheme not in ("udp", "tcp") or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not udp://host:port or tcp://host:port")
    kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
    return (host.strip("[]"), int(port)), kind


SYSLOG_PRIORITY = 10 * 8 + 5  # facility authpriv (10), severity notice (5)


def send_syslog(line: str, address: str = "/dev/log") -> None:
    """One syslog message (`<85>clearscan-audit: audit anchor {...}`: facility authpriv,
    severity notice) to a Unix socket or a collector over UDP or TCP (newline-framed, RFC 6587).
    OSError when it cannot be delivered (UDP to a host that is down does not say)."""
    import socket

    where, kind = syslog_target(address)
    message = f"<{SYSLOG_PRIORITY}>clearscan-audit: audit anchor {line}".encode()
    if isinstance(where, str):  # a Unix socket: datagram (rsyslog, journald), else stream
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(where)
                sock.send(message)
            return
        except OSError as exc:
            if exc.errno != errno.EPROTOTYPE:
                raise
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(where)
            sock.sendall(message + b"\n")
        return
    if kind == socket.SOCK_DGRAM:
        with socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET, kind) as sock:
            sock.sendto(message, where)
        return
    with socket.create_connection(where, timeout=5) as sock:
        sock.sendall(message + b"\n")


def put_s3(target: S3Target, keyring: Keyring, anchor: Anchor) -> str:
    """One object per anchor, under Object Lock (COMPLIANCE) until the retention ends."""
    key = target.key_for(anchor)
    until = datetime.now(UTC) + timedelta(days=target.retention_days)
    target.client().put_object(
        Bucket=target.bucket,
        Key=key,
        Body=(line_of(keyring, anchor) + "\n").encode(),
        ContentType="application/json",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    return key


def latest_s3(target: S3Target, keyring: Keyring) -> Anchor | None:
    client = target.client()
    prefix = f"{target.prefix}/anchors/" if target.prefix else "anchors/"
    last: str | None = None
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=target.bucket, Prefix=prefix
    ):
        for obj in page.get("Contents", []):
            if last is None or obj["Key"] > last:
                last = obj["Key"]
    if last is None:
        return None
    body = client.get_object(Bucket=target.bucket, Key=last)["Body"].read().decode()
    return parse_line(keyring, body.strip(), f"s3://{target.bucket}/{last}")
