"""Responses that carry patient data as files (original uploads, rendered images, heatmaps,
dataset items): never kept by a browser's or a proxy's cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response

NO_STORE: dict[str, str] = {"Cache-Control": "no-store", "Pragma": "no-cache"}
"""The caching headers of every response with patient data."""

_CACHING = {name.lower() for name in NO_STORE}

__all__ = ["NO_STORE", "PHIResponse"]


class PHIResponse(Response):
    """A response with patient data: `Cache-Control: no-store` and `Pragma: no-cache`, whatever
    caching headers the caller passes."""

    def __init__(
        self,
        content: Any = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        kept = {k: v for k, v in (headers or {}).items() if k.lower() not in _CACHING}
        super().__init__(content, status_code, {**kept, **NO_STORE}, media_type, background)
