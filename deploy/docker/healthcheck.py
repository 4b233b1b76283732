"""The image's HEALTHCHECK: standard library only, so a check costs a few milliseconds.

The container's main process (PID 1 after the entrypoint's exec) says what to check:
- `clearscan serve`: GET /readyz on 127.0.0.1 (port from its `--port`, default 8000) answers 200;
- `clearscan worker`: the database and the broker named in its environment accept TCP
  connections (the checked URLs are the ones the entrypoint resolved, *_FILE included);
- anything else (a one-off command): healthy while it runs.
Exit status 0: healthy, 1: unhealthy (Docker's convention).
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379, "amqp": 5672}


def main_process() -> tuple[list[str], dict[str, str]]:
    argv = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    env: dict[str, str] = {}
    for item in Path("/proc/1/environ").read_bytes().decode(errors="replace").split("\0"):
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    return [a for a in argv if a], env


def option(argv: list[str], name: str, default: str) -> str:
    value = default
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def check_ready(port: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as r:
            return None if r.status == 200 else f"/readyz answered {r.status}"
    except urllib.error.HTTPError as exc:
        return f"/readyz answered {exc.code}: {exc.read(300).decode(errors='replace')}"
    except OSError as exc:
        return f"/readyz: {exc}"


def check_tcp(name: str, url: str) -> str | None:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0].lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None  # SQLite, a socket path or an unknown scheme: nothing to dial
    port = parts.port or DEFAULT_PORTS[scheme]
    try:
        with socket.create_connection((parts.hostname, port), timeout=3):
            return None
    except OSError as exc:
        return f"{name} {parts.hostname}:{port} unreachable: {exc}"


def main() -> int:
    argv, env = main_process()
    if "serve" in argv:
        problem = check_ready(option(argv, "--port", "8000"))
        problems = [problem] if problem else []
    elif "worker" in argv:
        db = env.get("CLEARSCAN_DATABASE_URL") or env.get("DATABASE_URL") or ""
        broker = env.get("CLEARSCAN_BROKER_URL", "")
        problems = [p for p in (check_tcp("database", db), check_tcp("broker", broker)) if p]
    else:
        problems = []
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
