"""The head is anchored every minute (CLEARSCAN_AUDIT_ANCHOR_INTERVAL_SECONDS), checking only the
events since the last anchor: a tail deleted after that is detected, events that do not verify
are never anchored. Anchors also go to syslog, over a Unix socket, UDP or TCP."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from clearscan.app import create_app
from clearscan.audit import anchors, keys
from clearscan.audit import service as audit
from clearscan.config import ConfigError, Settings
from tests.audit.test_tamper import CTX, _add, _delete_tail, _unprotect, _verify
from tests.conftest import ADMIN_PASSWORD, login


@pytest.fixture
def sessions(app):
    return app.state.clearscan.sessions


def anchored(settings: Settings) -> list[int]:
    path = settings.data_dir / "audit-anchors.log"
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def head(sessions) -> int:
    with sessions() as db:
        return int(db.execute(text("SELECT seq FROM audit_head")).scalar_one())


def test_the_head_is_anchored_when_it_moved_and_only_then(app, sessions, settings):
    before = anchored(settings)
    _add(sessions, 4)
    with sessions() as db:
        anchor = audit.anchor_head(db=db)
    assert anchor is not None and anchor.seq == head(sessions)
    assert anchored(settings) == [*before, anchor.seq]
    with sessions() as db:
        assert audit.anchor_head(db=db) is None  # nothing new
    assert anchored(settings) == [*before, anchor.seq]
    assert _verify(sessions).ok


def test_a_tail_deleted_after_a_head_anchor_is_detected(app, sessions):
    _add(sessions, 5)
    with sessions() as db:
        anchor = audit.anchor_head(db=db)
    assert anchor is not None
    cut = anchor.seq - 2
    _delete_tail(sessions, cut)
    report = _verify(sessions)
    assert not report.ok and f"names event {anchor.seq}" in (report.reason or "")
    with sessions() as db, pytest.raises(anchors.AnchorError, match="before the anchored"):
        audit.anchor_head(db=db)


def test_events_since_the_anchor_that_do_not_verify_are_not_anchored(app, sessions, settings):
    _add(sessions, 2)
    with sessions() as db:
        audit.anchor_head(db=db)
    _add(sessions, 3)
    lines = anchored(settings)
    with sessions() as db:
        _unprotect(db)
        db.execute(
            text("UPDATE audit_events SET actor = 'someone-else' WHERE seq = :s"),
            {"s": head(sessions) - 1},
        )
        db.commit()
    with sessions() as db, pytest.raises(anchors.AnchorError, match="hash mismatch"):
        audit.anchor_head(db=db)
    assert anchored(settings) == lines


def test_the_server_anchors_new_events_within_the_interval(settings, model_cache):
    quick = settings.model_copy(update={"audit_anchor_interval_seconds": 1.0})
    app = create_app(quick, model_cache=model_cache)
    with TestClient(app, raise_server_exceptions=False) as client:
        login(client, "admin", ADMIN_PASSWORD)  # appends a login event
        target = head(app.state.clearscan.sessions)
        deadline = time.monotonic() + 10
        while anchored(settings)[-1] < target:
            assert time.monotonic() < deadline, "the head was not anchored"
            time.sleep(0.1)


# --- syslog ---------------------------------------------------------------------------------


RING = keys.Keyring.of("s" * 40)


def a_line() -> str:
    return anchors.line_of(RING, anchors.make_anchor(RING, 7, "ab" * 32))


def check_message(raw: bytes) -> None:
    text_ = raw.decode().rstrip("\n")
    prefix = "<85>clearscan-audit: audit anchor "  # authpriv.notice
    assert text_.startswith(prefix)
    got = anchors.parse_line(RING, text_[len(prefix) :], "syslog")  # the MAC still checks
    assert (got.seq, got.hash) == (7, "ab" * 32)


def test_syslog_over_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        anchors.send_syslog(a_line(), f"udp://127.0.0.1:{port}")
        check_message(server.recv(65536))


def test_syslog_over_tcp_and_a_collector_that_is_down():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        got: list[bytes] = []

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                got.append(conn.makefile("rb").readline())

        t = threading.Thread(target=accept)
        t.start()
        anchors.send_syslog(a_line(), f"tcp://127.0.0.1:{port}")
        t.join(5)
    check_message(got[0])
    with pytest.raises(OSError):
        anchors.send_syslog(a_line(), f"tcp://127.0.0.1:{port}")


def test_syslog_over_a_unix_datagram_socket(tmp_path: Path):
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        anchors.send_syslog(a_line(), path)
        check_message(server.recv(65536))


def test_anchor_now_sends_to_the_configured_collector(settings, model_cache):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        with_syslog = settings.model_copy(
            update={
                "audit_anchor_syslog": True,
                "audit_anchor_syslog_address": f"udp://127.0.0.1:{port}",
            }
        )
        app = create_app(with_syslog, model_cache=model_cache)  # start-up anchors once
        ring = keys.install(with_syslog)
        raw = server.recv(65536).decode()
        line = raw.split("audit anchor ", 1)[1]
        got = anchors.parse_line(ring, line, "syslog")
        with app.state.clearscan.sessions() as db:
            assert audit.anchor_now(db=db, ctx=CTX).seq >= got.seq


@pytest.mark.parametrize("address", ["log", "udp://nohost", "http://x:1", "tcp://:514"])
def test_a_wrong_syslog_address_is_a_config_error(settings, address):
    bad = settings.model_copy(update={"audit_anchor_syslog_address": address})
    with pytest.raises(ConfigError, match="SYSLOG_ADDRESS"):
        anchors.AnchorConfig.from_settings(bad)
