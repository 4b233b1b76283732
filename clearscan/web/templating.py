"""Jinja2 environment (autoescaping on, strict undefined), display filters, `render_page` and
`redirect`.

Pages may show patient references and images, so every page is sent with `Cache-Control:
no-store` and `Pragma: no-cache`. Templates contain no inline scripts or styles: the CSP is
`script-src 'self'; style-src 'self'`, so dynamic values travel in data-* attributes read by
static/app.js."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from clearscan import __version__
from clearscan.api.responses import NO_STORE

if TYPE_CHECKING:
    from clearscan.web.present.page import Page
    from clearscan.web.session import WebSession

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

# Labels that mean "nothing found" get the calm colour; every other label a stable palette slot.
_NEGATIVE_LABELS = {"normal", "negative", "no finding", "no_finding", "benign", "healthy"}
_PALETTE_SLOTS = 6
# CommonMark with raw HTML off; GFM tables (a core markdown-it rule) on, as model cards use them.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def format_dt(value: datetime | None, *, with_seconds: bool = False) -> str:
    """A readable UTC timestamp: `24 Nov 2025, 14:05 UTC`."""
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    fmt = "%d %b %Y, %H:%M:%S UTC" if with_seconds else "%d %b %Y, %H:%M UTC"
    return value.astimezone(UTC).strftime(fmt)


def format_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


def format_pct(p: float) -> str:
    return f"{p * 100:.1f}%"


def format_metric(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    return str(v)


def chip_class(label: str) -> str:
    """CSS class for a label chip: stable across pages and restarts (hash, not Python's hash())."""
    if label.strip().lower() in _NEGATIVE_LABELS:
        return "chip chip-neg"
    slot = int(hashlib.sha256(label.encode()).hexdigest(), 16) % _PALETTE_SLOTS
    return f"chip chip-c{slot}"


def markdown(text: str | None) -> Markup:
    """Model cards: CommonMark with raw HTML disabled (escaped); link schemes are validated."""
    if not text:
        return Markup("")
    return Markup(_markdown.render(text))  # noqa: S704 - html is off: the output is escaped


def compact_json(value: Any) -> str:
    if not value:
        return ""
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str)


env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(
    dt=format_dt,
    bytes=format_bytes,
    pct=format_pct,
    metric=format_metric,
    chip=chip_class,
    markdown=markdown,
    compact_json=compact_json,
)
env.globals.update(version=__version__)


def render(
    request: Request,
    template: str,
    *,
    ws: WebSession | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    html = env.get_template(template).render(
        request=request, path=request.url.path, ws=ws, csrf=ws.csrf if ws else "", **context
    )
    response = HTMLResponse(html, status_code=status, headers=headers)
    response.headers.update(NO_STORE)
    return response


def render_page(
    request: Request,
    page: Page,
    *,
    ws: WebSession | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """Render a page context with its template."""
    return render(request, page.template, ws=ws, status=status, headers=headers, **page.context())


def redirect(url: str) -> RedirectResponse:
    """303 See Other: where a page goes after a form changed something (or to sign in)."""
    return RedirectResponse(url, status_code=303)
