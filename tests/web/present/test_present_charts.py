"""The training chart's SVG geometry and the number formats the pages share (pure functions)."""

from __future__ import annotations

import math

from clearscan.web.present.charts import (
    CHART,
    MAX_MARKERS,
    BestEpoch,
    epoch_ticks,
    nice_ceiling,
    training_chart,
)
from clearscan.web.present.numbers import as_int, duration, finite, fixed3, number


def test_chart_geometry():
    history = [{"epoch": e, "loss": 1.0 / e, "val_auc": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    chart = training_chart(history, 10, best_epoch=3)
    g = CHART
    xs = [float(p.split(",")[0]) for p in chart.auc_points.split()]
    assert xs[0] == g.left and xs == sorted(xs) and xs[-1] < g.right
    aucs = [float(p.split(",")[1]) for p in chart.auc_points.split()]
    assert aucs == sorted(aucs, reverse=True)  # a rising AUC goes up the chart
    assert [t.label for t in chart.xticks] == ["1", "2", "4", "6", "8", "10"]
    assert [line.loss for line in chart.grid] == ["0", "0.3", "0.6", "0.9", "1.2"]
    assert chart.best == BestEpoch(x=xs[-1].__format__(".1f"), epoch=3)
    assert len(chart.markers) == 3 and not chart.empty
    empty = training_chart([], 0, best_epoch=None)
    assert empty.empty and empty.span == 1 and empty.loss_points == ""
    assert epoch_ticks(203)[-2:] == [150, 203]  # no label crowding the last one


def test_chart_axes_span_the_plot_area():
    history = [{"epoch": e, "loss": 2.0 - 0.1 * e, "val_auc": 0.1 * e} for e in range(1, 11)]
    chart = training_chart(history, 10, best_epoch=None)
    loss = [tuple(map(float, p.split(","))) for p in chart.loss_points.split()]
    assert loss[0][0] == CHART.left and loss[-1][0] == CHART.right
    assert all(CHART.top <= y <= CHART.bottom for _, y in loss)
    assert chart.grid[0].y == f"{CHART.bottom:.1f}"  # zero at the bottom
    assert chart.grid[-1].y == f"{CHART.top:.1f}"
    assert [line.auc for line in chart.grid] == ["0", "0.25", "0.5", "0.75", "1"]
    assert chart.best is None


def test_chart_skips_missing_values_and_clamps():
    history = [
        {"epoch": 1, "loss": 0.5, "val_auc": float("nan")},
        {"epoch": 2, "loss": None, "val_auc": 1.7},  # an AUC above 1 stays on the chart
        {"epoch": "x", "loss": 0.1},  # no epoch: not drawn
        {"epoch": True, "loss": 0.1},  # a bool is not an epoch
    ]
    chart = training_chart(history, 0, best_epoch=7)  # a best epoch not in the history
    assert chart.span == 2 and len(chart.markers) == 2
    first, second = chart.markers
    assert first.auc_y is None and first.loss_y is not None
    assert second.loss_y is None and second.auc_y == f"{CHART.top:.1f}"
    assert "validation AUC —" in first.title and "loss —" in second.title
    assert len(chart.loss_points.split()) == 1 and len(chart.auc_points.split()) == 1
    assert chart.best is None


def test_one_epoch_sits_in_the_middle():
    chart = training_chart([{"epoch": 1, "loss": 1.0, "val_auc": 0.5}], 1, best_epoch=1)
    middle = f"{(CHART.left + CHART.right) / 2:.1f}"
    assert chart.markers[0].x == middle and chart.best == BestEpoch(x=middle, epoch=1)
    assert [t.label for t in chart.xticks] == ["1"]


def test_markers_are_left_out_on_long_runs():
    history = [{"epoch": e, "loss": 1.0, "val_auc": 0.5} for e in range(1, MAX_MARKERS + 2)]
    chart = training_chart(history, 0, best_epoch=None)
    assert chart.markers == [] and len(chart.loss_points.split()) == MAX_MARKERS + 1


def test_nice_ceiling_and_ticks():
    assert [nice_ceiling(v) for v in (0.9, 1.05, 1.3, 7.0, 0.031)] == [1.0, 1.2, 1.6, 8.0, 0.032]
    assert nice_ceiling(0) == 1.0 and nice_ceiling(math.inf) == 1.0
    assert epoch_ticks(1) == [1] and epoch_ticks(2) == [1, 2]
    for span in (3, 7, 10, 37, 100, 500):
        ticks = epoch_ticks(span)
        assert ticks[0] == 1 and ticks[-1] == span and ticks == sorted(set(ticks))
        assert len(ticks) <= 7


def test_number_formats():
    assert duration(45) == "45 s" and duration(185) == "3 min 05 s"
    assert duration(3720) == "1 h 02 min" and duration(None) == "—"
    assert duration(-1) == "—" and duration("12") == "—"
    assert fixed3(0.91234) == "0.912" and fixed3(float("nan")) == "—" and fixed3(True) == "—"
    assert finite(3) == 3.0 and finite(False) is None and finite(float("inf")) is None
    assert as_int(4) == 4 and as_int(4.0) is None and as_int(True) is None
    assert number(2.0) == "2" and number(0.123456) == "0.1235" and number(None) == "—"
    assert number(True) == "True" and number(7) == "7" and number(1e20) == "1e+20"
