"""`clearscan predict IMAGE...`: offline analysis with the installed models, no server; or, with
`--server URL --async`, the files sent to a running server as one batch."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clearscan.cli.common import (
    DataDirOpt,
    console,
    db_session,
    err_console,
    fail,
    load_settings,
)
from clearscan.errors import ClearScanError
from clearscan.inference.tasks import ImageClassificationTask, ImageRequest


def _safe_stem(path: Path, index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:64].strip("._") or "image"
    return f"{index:04d}-{stem}"


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files: PNG, JPEG, DICOM, NIfTI.")],
    model: Annotated[
        str | None, typer.Option(help="Model name (default: the configured default).")
    ] = None,
    no_explain: Annotated[
        bool, typer.Option("--no-explain", help="Skip the Grad-CAM heatmap.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Write <n>-<name>.heatmap.png and .json per image here.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per file.")
    ] = False,
    data_dir: DataDirOpt = None,
    server: Annotated[
        str | None,
        typer.Option(help="A running server's URL: send the files there as one batch (--async)."),
    ] = None,
    run_async: Annotated[
        bool,
        typer.Option(
            "--async",
            help="With --server: queue the files as a batch and print where to follow it.",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CLEARSCAN_TOKEN", help="--server: a bearer token (POST /api/v1/auth/token)."
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            envvar="CLEARSCAN_USER",
            help="--server: sign in as this user instead of a token (password from "
            "$CLEARSCAN_PASSWORD, or asked).",
        ),
    ] = None,
) -> None:
    """Analyse images offline and print the probabilities (and write heatmaps with --out); with
    --server URL --async, queue them on that server as a batch and print the batch id."""
    if server is not None or run_async:
        if server is None or not run_async:
            raise fail(
                "--server and --async go together: clearscan predict --server URL --async FILE...",
                2,
            )
        if out is not None:
            raise fail("--out writes local results; a batch's results are on the server", 2)
        submit_batch(
            images,
            server=server,
            model=model,
            explain=not no_explain,
            token=token,
            user=user,
            as_json=as_json,
        )
        return
    from sqlalchemy.orm import sessionmaker

    from clearscan.bootstrap import build_registry

    settings = load_settings(data_dir)
    stack = ExitStack()
    # the roll-out state (which version is active) lives in the database: honour it offline too
    db = stack.enter_context(db_session(settings))
    registry = build_registry(settings, sessionmaker(bind=db.get_bind()))
    try:
        entry = registry.get(model or settings.default_model)
        runner = stack.enter_context(registry.lease(entry))  # loaded while the files run
        classify = ImageClassificationTask(runner)
    except ClearScanError as exc:
        raise fail(str(exc)) from None
    limits = settings.image_limits()
    if out:
        out.mkdir(parents=True, exist_ok=True)
    failures = 0
    show_bar = len(images) > 1
    with (
        stack,
        Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            disable=not show_bar,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("analysing", total=len(images))
        for i, path in enumerate(images, 1):
            result: dict[str, Any] = {"file": str(path)}
            try:
                data = path.read_bytes()
                request = ImageRequest(uploads=[data], limits=limits, explain=not no_explain)
                a = classify(request).items[0]
            except OSError as exc:
                result.update(error=f"cannot read file: {exc.strerror}", status=400)
            except ClearScanError as exc:
                result.update(error=exc.detail, status=exc.status_code)
            else:
                m = entry.manifest
                heat_path = None
                if out and a.heatmap_png is not None:
                    heat_path = out / f"{_safe_stem(path, i)}.heatmap.png"
                    heat_path.write_bytes(a.heatmap_png)
                result.update(
                    id=None,
                    image_id=None,
                    model={"name": m.name, "version": m.version},
                    labels=m.labels,
                    probabilities=a.probabilities,
                    top_label=a.top_label,
                    out_of_domain=None if a.ood_score is None else a.ood_score > 1.0,
                    ood_score=a.ood_score,
                    heatmap_url=heat_path.resolve().as_uri() if heat_path else None,
                    heatmap_box=list(a.box) if a.heatmap_png else None,
                    inference_ms=a.inference_ms,
                )
                if out:
                    (out / f"{_safe_stem(path, i)}.json").write_text(json.dumps(result, indent=2))
            failures += "error" in result
            _emit(result, as_json)
            progress.advance(task)
    if failures:
        raise typer.Exit(1)


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return
    if "error" in result:
        err_console.print(f"[red]{result['file']}[/red]: {result['error']} ({result['status']})")
        return
    probs = ", ".join(
        f"{lab} {p:.3f}" for lab, p in zip(result["labels"], result["probabilities"], strict=True)
    )
    console.print(
        f"{result['file']}: [bold]{result['top_label']}[/bold] ({probs}) "
        + ("[yellow]OUT OF DOMAIN[/yellow] " if result.get("out_of_domain") else "")
        + f"[dim]{result['model']['name']}:{result['model']['version']}, "
        f"{result['inference_ms']:.1f} ms[/dim]"
    )


# --- --server URL --async: the files as one batch on a running server ---------------------------

HTTP_TIMEOUT_S = 300.0


def submit_batch(
    images: list[Path],
    *,
    server: str,
    model: str | None,
    explain: bool,
    token: str | None,
    user: str | None,
    as_json: bool,
) -> None:
    """Zip the files, upload them as a batch (retrying once, under the same idempotency key, when
    the reply is lost) and print the batch id and where to follow it."""
    base = _base_url(server)
    archive = _zip(images)
    headers = {"Authorization": f"Bearer {token or _sign_in(base, user)}"}
    fields = {"explain": "true" if explain else "false", **({"model": model} if model else {})}
    body, content_type = _multipart(fields, "file", "batch.zip", archive)
    headers.update({"Content-Type": content_type, "Idempotency-Key": uuid.uuid4().hex})
    url = f"{base}/api/v1/batches"
    try:
        reply = _send(url, body, headers)
    except (urllib.error.URLError, OSError):
        try:  # the reply was lost, or the request: the same key names the same batch
            reply = _send(url, body, headers)
        except (urllib.error.URLError, OSError) as exc:
            raise fail(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None
    page = f"{base}/batches/{reply['id']}"
    api = f"{base}{reply['url']}"
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "batch_id": reply["id"],
                    "status": reply["status"],
                    "images": reply["progress"]["total"],
                    "model": reply["model"],
                    "url": page,
                    "api_url": api,
                }
            )
            + "\n"
        )
        return
    console.print(f"batch [bold]{reply['id']}[/bold] queued: {reply['progress']['total']} images")
    console.print(f"follow it at {page}")
    console.print(f"[dim]or GET {api}[/dim]")


def _base_url(server: str) -> str:
    url = server.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise fail(f"--server {server!r}: give the server's URL, such as http://127.0.0.1:8000", 2)
    return url


def _zip(images: list[Path]) -> bytes:
    """The files in one ZIP archive, stored as they are (images are compressed already); each
    under its file name (the server keeps names only to show them)."""
    if not images:
        raise fail("no files given", 2)
    buf = io.BytesIO()
    used: set[str] = set()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, path in enumerate(images, 1):
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise fail(f"{path}: cannot read file: {exc.strerror}") from None
            name = path.name or f"image-{i}"
            if name in used:
                name = f"{i:04d}-{name}"
            used.add(name)
            zf.writestr(name, data)
    return buf.getvalue()


def _multipart(
    fields: dict[str, str], file_field: str, filename: str, data: bytes
) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
        f'filename="{filename}"\r\nContent-Type: application/zip\r\n\r\n'.encode()
    )
    out.write(data)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _send(url: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """POST `body`; the JSON reply. An error reply ends the command with its detail."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            reply: dict[str, Any] = json.loads(response.read())
            return reply
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise fail(f"the server refused the request ({exc.code}): {detail}") from None


def _sign_in(base: str, user: str | None) -> str:
    """A bearer token for `user` (the password from $CLEARSCAN_PASSWORD, or asked)."""
    if not user:
        raise fail("--server needs --token (or $CLEARSCAN_TOKEN) or --user NAME", 2)
    password = os.environ.get("CLEARSCAN_PASSWORD") or typer.prompt(
        f"password for {user}", hide_input=True
    )
    body = urllib.parse.urlencode({"username": user, "password": password}).encode()
    try:
        reply = _send(
            f"{base}/api/v1/auth/token",
            body,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
    except (urllib.error.URLError, OSError) as exc:
        raise fail(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None
    return str(reply["access_token"])
