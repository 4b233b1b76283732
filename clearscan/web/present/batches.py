"""Batch pages: the list (with each batch's progress bar and the submit form) and one batch with
its per-image results. Batches are the API's shapes (`BatchPublic`, `BatchDetail`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clearscan.batches.schemas import BatchDetail, BatchItemPublic, BatchProgress, BatchPublic
from clearscan.inference.manifest import ModelManifest
from clearscan.web.forms import Pagination
from clearscan.web.present.page import Page

LIVE_STATUSES = ("queued", "running")
BATCH_NOTICES = {
    "submitted": "Batch queued: each image becomes a case as it is analysed.",
    "cancelled": "Batch cancelled; the cases made before are kept.",
    "cancel-requested": "Cancellation requested: the batch stops before its next image; the "
    "cases made so far are kept.",
}


@dataclass(frozen=True)
class ModelChoice:
    value: str  # NAME: the version serving it analyses each image, as a single analysis
    label: str


@dataclass(frozen=True)
class BatchForm:
    model: str
    explain: bool = True
    team: str = ""  # one of the user's teams, when they are in several


@dataclass(frozen=True)
class Bar:
    value: int
    max: int


def progress_text(p: BatchProgress) -> str:
    text = f"{p.done} of {p.total} image{'s' if p.total != 1 else ''}"
    return f"{text} · {p.failed} failed" if p.failed else text


def bar_of(batch: BatchPublic) -> Bar | None:
    """The progress bar's values; None (an indeterminate bar) while it waits for a worker."""
    p = batch.progress
    if batch.status == "queued" and p.done == 0:
        return None
    return Bar(value=min(p.done, p.total), max=max(p.total, 1))


@dataclass(frozen=True)
class BatchRow:
    batch: BatchPublic
    live: bool
    progress: str
    bar: Bar | None


def batch_rows(batches: Sequence[BatchPublic]) -> list[BatchRow]:
    return [
        BatchRow(
            batch=b,
            live=b.status in LIVE_STATUSES,
            progress=progress_text(b.progress),
            bar=bar_of(b),
        )
        for b in batches
    ]


def model_choices(manifests: Sequence[ModelManifest]) -> list[ModelChoice]:
    """The image models a batch may use (tabular models take feature values, not images)."""
    return [
        ModelChoice(
            value=m.name,
            label=f"{m.name} {m.version}"
            + (
                f" — {' '.join(x for x in (m.body_part, m.modality) if x)}"
                if (m.body_part or m.modality)
                else ""
            ),
        )
        for m in manifests
        if not m.tabular
    ]


@dataclass(frozen=True, kw_only=True)
class BatchesPage(Page):
    template = "batches.html"
    rows: list[BatchRow]
    pages: Pagination
    can_submit: bool
    models: list[ModelChoice]
    form: BatchForm
    submit_key: str  # sent back with the form: the same form twice makes one batch
    max_items: int
    max_upload_mb: float
    error: str | None = None
    teams: tuple[str, ...] = ()  # the user's teams: a picker when there are several


@dataclass(frozen=True)
class ItemRow:
    item: BatchItemPublic
    number: int  # 1-based, as shown
    status: str  # queued | succeeded | failed, or "not analysed" once the batch ended


@dataclass(frozen=True, kw_only=True)
class BatchPage(Page):
    template = "batch.html"
    batch: BatchDetail
    live: bool
    progress: str
    bar: Bar | None
    items: list[ItemRow]
    can_cancel: bool
    notice: str | None = None
    error: str | None = None


def batch_page(
    batch: BatchDetail,
    *,
    may_cancel: bool,
    notice: str | None = None,
    error: str | None = None,
) -> BatchPage:
    """The page of one batch; `may_cancel` whether the viewer may cancel it (its submitter or
    an admin), shown only while it can still be cancelled."""
    live = batch.status in LIVE_STATUSES
    items = [
        ItemRow(
            item=it,
            number=it.index + 1,
            status="not analysed" if it.status == "queued" and not live else it.status,
        )
        for it in batch.items
    ]
    return BatchPage(
        batch=batch,
        live=live,
        progress=progress_text(batch.progress),
        bar=bar_of(batch),
        items=items,
        can_cancel=may_cancel and live and not batch.cancel_requested,
        notice=notice,
        error=error,
    )
