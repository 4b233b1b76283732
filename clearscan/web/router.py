"""Mounting the web UI: `mount(app)` adds every page family's routes, /static and the page
exception handlers. The domain errors that leave a page are rendered by
`clearscan.web.errors.error_page`, which the app's error handler calls first.

Images are never served from /static: the pages point <img> tags at the authenticated API
(`/api/v1/images/{id}/preview.png`, `/api/v1/predictions/{id}/heatmap.png`,
`/api/v1/datasets/{id}/items/{idx}/image.png`), which accepts the session cookie for GET
requests."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from clearscan.web.errors import LoginRequired, PageError, login_required, page_error
from clearscan.web.pages import admin, analyze, auth, batches, cases, datasets, models, training
from clearscan.web.templating import STATIC_DIR

FAMILIES = (auth, analyze, cases, batches, models, datasets, training, admin)

router = APIRouter(include_in_schema=False)
for family in FAMILIES:
    router.include_router(family.router)


def mount(app: FastAPI) -> None:
    """Add the pages, /static (CSS, JS, icons only) and the page exception handlers to `app`."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageError, page_error)
