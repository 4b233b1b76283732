"""Resource limits against a real server (uvicorn on a loopback port): large bodies need
credentials before they are read, uploads and analyses have per-process concurrency limits that
answer 503 + Retry-After, and analyses are refused 413 when their images would decode past the
byte budgets."""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message, Receive, Scope, Send

from clearscan.app import create_app
from clearscan.config import Settings
from clearscan.imaging import Limits, decode
from clearscan.inference.tasks import ImageClassificationTask
from tests.conftest import ADMIN_PASSWORD, png_bytes

MIB = 1 << 20


class BodyCounter:
    """Outermost ASGI wrapper: counts the request-body bytes the app has received."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


class Live:
    def __init__(self, app: FastAPI, counter: BodyCounter, port: int) -> None:
        self.app = app
        self.counter = counter
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    @property
    def state(self) -> Any:
        return self.app.state.clearscan

    def token(self) -> dict[str, str]:
        r = httpx.post(
            f"{self.base}/api/v1/auth/token",
            data={"username": "admin", "password": ADMIN_PASSWORD},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


@contextmanager
def live_server(settings: Settings, model_cache: Any, **update: Any) -> Iterator[Live]:
    import uvicorn

    app = create_app(settings.model_copy(update=update), model_cache=model_cache)
    counter = BodyCounter(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(counter, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield Live(app, counter, port)
    finally:
        server.should_exit = True
        thread.join(30)


def _stream_unread(port: int, path: str, headers: dict[str, str], total: int) -> tuple[bytes, int]:
    """POST `total` bytes of multipart body as fast as the server takes them; stop as soon as a
    reply arrives. Returns (the reply's first bytes, body bytes sent before it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {total}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    sock.sendall(head.encode())
    sock.setblocking(False)
    chunk = b"--xyz\r\n" + bytes(64 * 1024 - 7)
    sent = 0
    reply = b""
    deadline = time.monotonic() + 60
    try:
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                reply = sock.recv(65536)
                break
            if writable:
                try:
                    sent += sock.send(chunk[: total - sent])
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        if not reply:
            sock.setblocking(True)
            sock.settimeout(10)
            reply = sock.recv(65536)
    finally:
        sock.close()
    return reply, sent


@pytest.mark.parametrize(
    ("path", "total"),
    [
        ("/api/v1/models", 200 * MIB),  # under the model upload limit (2 GiB)
        ("/api/v1/datasets", 200 * MIB),  # under the dataset upload limit (4 GiB)
        ("/datasets", 200 * MIB),  # the web import form
        ("/api/v1/batches", 45 * MIB),  # under the request body limit (50 MB)
        ("/api/v1/predict", 45 * MIB),
        ("/analyze", 45 * MIB),
    ],
)
def test_unauthenticated_large_upload_is_refused_before_its_body(
    settings, model_cache, path, total
):
    with live_server(settings, model_cache) as live:
        # the API answers 401; a web form goes to sign in, as its page would send it
        refused = b"HTTP/1.1 401" if path.startswith("/api/") else b"HTTP/1.1 303"
        reply, sent = _stream_unread(live.port, path, {}, total)
        assert reply.startswith(refused), reply[:200]
        assert path.startswith("/api/") or b"\r\nlocation: /login\r\n" in reply.lower()
        assert live.counter.received == 0  # the app never read a byte of the body
        # the client could only fill the socket buffers before the reply came
        assert sent < 8 * MIB, sent
        # bad credentials are no better than none
        for bad in ("Bearer not-a-token", "Bearer csk_" + "x" * 40):
            reply, sent = _stream_unread(live.port, path, {"Authorization": bad}, total)
            assert reply.startswith(refused), reply[:200]
            assert sent < 8 * MIB
        assert live.counter.received == 0


def test_unauthenticated_refusal_is_the_api_error_body(settings, model_cache):
    with live_server(settings, model_cache) as live:
        r = httpx.post(f"{live.base}/api/v1/models", files={"file": ("m.zip", b"x" * 1000)})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"] == "application/problem+json"
        assert "not authenticated" in r.json()["detail"]
        # counted (and audited within the per-interval bound) like every anonymous denial
        metrics = httpx.get(f"{live.base}/metrics", timeout=30).text
        assert 'clearscan_anonymous_denials_total{route="/api/v1/models"} 1.0' in metrics
        # an authenticated upload gets past the check to its route (which refuses the junk)
        r = httpx.post(
            f"{live.base}/api/v1/models",
            headers=live.token(),
            files={"file": ("m.zip", b"x" * 1000)},
            timeout=30,
        )
        assert r.status_code not in (401, 503) and 400 <= r.status_code < 500, r.text


def test_content_length_over_the_route_limit_is_refused_up_front(settings, model_cache):
    with live_server(settings, model_cache, max_upload_mb=1.0) as live:
        headers = live.token()
        live.counter.received = 0
        reply, _ = _stream_unread(live.port, "/api/v1/predict", headers, 5 * MIB)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"upload limit of 1 MB" in reply
        assert live.counter.received == 0


def _hold_upload(live: Live, headers: dict[str, str], release: threading.Event) -> threading.Thread:
    """An authenticated model upload that sends part of its body, then waits for `release`."""

    def body() -> Iterator[bytes]:
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="m.zip"\r\n\r\n'
        release.wait(30)
        yield b"junk\r\n--xyz--\r\n"

    def run() -> None:
        httpx.post(
            f"{live.base}/api/v1/models",
            headers={**headers, "Content-Type": "multipart/form-data; boundary=xyz"},
            content=body(),
            timeout=60,
        )

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _metric(live: Live, name: str, kind: str) -> float:
    text = httpx.get(f"{live.base}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("kind") == kind:
                return float(sample.value)
    raise AssertionError(f"{name}{{kind={kind!r}}} not exported")


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_concurrent_uploads_are_capped(settings, model_cache):
    with live_server(
        settings, model_cache, max_concurrent_uploads=1, busy_retry_after_seconds=9
    ) as live:
        headers = live.token()
        release = threading.Event()
        holder = _hold_upload(live, headers, release)
        try:
            _wait_for(lambda: live.state.uploads.in_flight == 1)
            r = httpx.post(
                f"{live.base}/api/v1/datasets",
                headers=headers,
                files={"file": ("d.csv", b"a,b\n1,2\n")},
                timeout=30,
            )
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "9"
            assert "CLEARSCAN_MAX_CONCURRENT_UPLOADS" in r.json()["detail"]
            assert _metric(live, "clearscan_in_flight", "upload") == 1
            assert _metric(live, "clearscan_busy_refusals_total", "upload") == 1
        finally:
            release.set()
            holder.join(60)
        assert live.state.uploads.in_flight == 0
        assert _metric(live, "clearscan_in_flight", "upload") == 0


def test_concurrent_analyses_are_capped(settings, model_cache, monkeypatch):
    """A test model that holds its slot until told to go on: the next analysis gets 503 +
    Retry-After at once, without queueing; once the first ends, analyses run again."""
    entered, release = threading.Event(), threading.Event()
    original = ImageClassificationTask.run

    def held(self: ImageClassificationTask, prepared: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return original(self, prepared)

    monkeypatch.setattr(ImageClassificationTask, "run", held)
    with live_server(
        settings,
        model_cache,
        max_concurrent_analyses=1,
        max_queued_analyses=0,
        busy_retry_after_seconds=7,
    ) as live:
        headers = live.token()
        image = {"file": ("x.png", png_bytes(), "image/png")}
        first: dict[str, httpx.Response] = {}

        def analyse() -> None:
            first["r"] = httpx.post(
                f"{live.base}/api/v1/predict", headers=headers, files=image, timeout=60
            )

        thread = threading.Thread(target=analyse)
        thread.start()
        try:
            assert entered.wait(30)
            assert _metric(live, "clearscan_in_flight", "analysis") == 1
            r = httpx.post(f"{live.base}/api/v1/predict", headers=headers, files=image, timeout=30)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "7"
            assert "CLEARSCAN_MAX_CONCURRENT_ANALYSES" in r.json()["detail"]
            assert _metric(live, "clearscan_busy_refusals_total", "analysis") == 1
        finally:
            release.set()
            thread.join(60)
        assert first["r"].status_code == 200, first["r"].text
        assert _metric(live, "clearscan_in_flight", "analysis") == 0
        r = httpx.post(f"{live.base}/api/v1/predict", headers=headers, files=image, timeout=60)
        assert r.status_code == 200, r.text


def _rgb_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_analysis_over_the_decode_budgets_is_413(settings, model_cache):
    small = png_bytes()
    each = decode(small, limits=Limits()).decoded_bytes
    budget_mb = 2.5 * each / MIB
    with live_server(settings, model_cache, max_request_decoded_mb=budget_mb) as live:
        headers = live.token()
        url = f"{live.base}/api/v1/predict"
        two = [("file", (f"{i}.png", small, "image/png")) for i in range(2)]
        assert httpx.post(url, headers=headers, files=two, timeout=60).status_code == 200
        three = [("file", (f"{i}.png", small, "image/png")) for i in range(3)]
        r = httpx.post(url, headers=headers, files=three, timeout=60)
        assert r.status_code == 413, r.text
        assert r.json()["detail"].startswith("file 3: ")
        assert "CLEARSCAN_MAX_REQUEST_DECODED_MB" in r.json()["detail"]
    with live_server(settings, model_cache, max_decoded_mb=64) as live:
        big = _rgb_png(2000, 2000)  # 4 M pixels, ~124 MB to decode as RGB
        assert len(big) < 100_000
        r = httpx.post(
            f"{live.base}/api/v1/predict",
            headers=live.token(),
            files={"file": ("big.png", big, "image/png")},
            timeout=60,
        )
        assert r.status_code == 413, r.text
        assert "over the limit of 64 MB per image (CLEARSCAN_MAX_DECODED_MB)" in r.json()["detail"]
