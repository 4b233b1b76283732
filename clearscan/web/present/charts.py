"""SVG geometry of the training chart: loss (left axis) and validation AUC (right axis, 0-1) per
epoch. Pure functions of a run's progress history; the template draws what they return.

static/training.js redraws the same chart while a run trains, reading the geometry from the
<svg>'s data-* attributes: keep the two in step."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clearscan.web.present.numbers import as_int, finite, fixed3


@dataclass(frozen=True)
class ChartGeometry:
    """The plot area in SVG user units: the whole picture and the inner box of the axes."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int


CHART = ChartGeometry(width=640, height=240, left=52, right=588, top=14, bottom=204)
MAX_MARKERS = 60  # epoch markers (with a tooltip each) are drawn up to this many epochs
_NICE = (1.0, 1.2, 1.6, 2.0, 2.4, 3.2, 4.0, 6.0, 8.0, 10.0)  # quarters of these read well
_TICK_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class GridLine:
    """A horizontal grid line at a quarter of the height and its two axis labels."""

    y: str
    loss: str
    auc: str


@dataclass(frozen=True)
class XTick:
    x: str
    label: str


@dataclass(frozen=True)
class EpochMarker:
    """The dots of one epoch (None where the value is missing) and their tooltip."""

    x: str
    loss_y: str | None
    auc_y: str | None
    title: str


@dataclass(frozen=True)
class BestEpoch:
    x: str
    epoch: int


@dataclass(frozen=True)
class TrainingChart:
    geometry: ChartGeometry
    span: int  # epochs the x axis covers
    empty: bool  # no epoch finished yet
    loss_points: str  # SVG polyline points "x,y x,y ..."
    auc_points: str
    markers: list[EpochMarker]  # empty past MAX_MARKERS epochs
    grid: list[GridLine]
    xticks: list[XTick]
    best: BestEpoch | None


def nice_ceiling(value: float) -> float:
    """The smallest "nice" number (1, 1.2, 1.6, 2, ... times a power of ten) >= value."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    for m in _NICE:
        if value <= m * base * (1 + 1e-9):
            return m * base
    return 10 * base  # pragma: no cover - _NICE ends at 10


def epoch_ticks(span: int) -> list[int]:
    """Epochs labelled on an x axis of `span` epochs: the first, the last and round steps."""
    if span <= 1:
        return [1]
    step = next((s for s in _TICK_STEPS if s >= (span - 1) / 5), _TICK_STEPS[-1])
    # a tick closer than 6% of the axis to the last one would crowd its label
    middle = [t for t in range(step, span, step) if t > 1 and (span - t) / (span - 1) >= 0.06]
    return [1, *middle, span]


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def training_chart(
    history: Sequence[Mapping[str, Any]], span: int, best_epoch: int | None
) -> TrainingChart:
    """The chart of `history` (dicts with epoch, loss, val_auc) on an axis of at least `span`
    epochs, with the kept epoch `best_epoch` marked."""
    g = CHART
    rows = [h for h in history if as_int(h.get("epoch")) is not None]
    span = max([span, 1, *(int(h["epoch"]) for h in rows)])
    losses = [v for h in rows if (v := finite(h.get("loss"))) is not None]
    loss_max = nice_ceiling(max(losses) * 1.05) if losses else 1.0

    def x_of(epoch: int) -> float:
        if span <= 1:
            return (g.left + g.right) / 2
        return g.left + (g.right - g.left) * (epoch - 1) / (span - 1)

    def y_of(fraction: float) -> float:
        return g.bottom - max(0.0, min(1.0, fraction)) * (g.bottom - g.top)

    loss_points, auc_points, markers = [], [], []
    for h in rows:
        x = _fmt(x_of(int(h["epoch"])))
        loss, auc = finite(h.get("loss")), finite(h.get("val_auc"))
        loss_y = _fmt(y_of(loss / loss_max)) if loss is not None else None
        auc_y = _fmt(y_of(auc)) if auc is not None else None
        if loss_y is not None:
            loss_points.append(f"{x},{loss_y}")
        if auc_y is not None:
            auc_points.append(f"{x},{auc_y}")
        title = f"Epoch {h['epoch']}: loss {fixed3(loss)}, validation AUC {fixed3(auc)}"
        markers.append(EpochMarker(x=x, loss_y=loss_y, auc_y=auc_y, title=title))
    grid = [
        GridLine(y=_fmt(y_of(q / 4)), loss=f"{loss_max * q / 4:.3g}", auc=f"{q / 4:.3g}")
        for q in range(5)
    ]
    best = None
    if best_epoch is not None and any(int(h["epoch"]) == best_epoch for h in rows):
        best = BestEpoch(x=_fmt(x_of(best_epoch)), epoch=best_epoch)
    return TrainingChart(
        geometry=g,
        span=span,
        empty=not rows,
        loss_points=" ".join(loss_points),
        auc_points=" ".join(auc_points),
        markers=markers if len(markers) <= MAX_MARKERS else [],
        grid=grid,
        xticks=[XTick(x=_fmt(x_of(t)), label=str(t)) for t in epoch_ticks(span)],
        best=best,
    )
