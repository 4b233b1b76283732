"""QCA on analytically rendered vessels of known width, narrowing and length."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from clearscan.errors import Unprocessable
from clearscan.measure import InvalidMask, QcaResult, measure_vessels
from tests.measure import synth


def _worst(result: QcaResult):  # type: ignore[no-untyped-def]
    lesions = [s.lesion for s in result.segments if s.lesion is not None]
    assert lesions, "no segment measured"
    return max(lesions, key=lambda les: les.percent_stenosis)


@pytest.mark.parametrize("width", [10, 14, 20])
@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_straight_tube_stenosis(width: int, angle: float) -> None:
    mask, truth = synth.straight_tube(width, angle_deg=angle, percent=50.0, lesion_length=40.0)
    les = _worst(measure_vessels(mask))
    assert abs(les.percent_stenosis - 50.0) <= 3.0
    assert abs(les.mld - truth["mld"]) <= 0.6
    assert abs(les.rvd - truth["rvd"]) <= 0.6
    # The borders are where the profile is back within 5 % of the reference: for a cosine
    # narrowing that is 0.7-0.85 of its full length.
    assert 0.6 * 40.0 <= les.lesion_length <= 40.0 + 2.0
    assert math.hypot(les.x - truth["x"], les.y - truth["y"]) <= 4.0


def test_distance_from_segment_start_is_half_the_tube() -> None:
    mask, _ = synth.straight_tube(12, percent=60.0, length=200.0)
    result = measure_vessels(mask)
    # The forks the skeleton grows at each flat end are pruned as spurs: one segment is left.
    assert len(result.segments) == 1
    seg = result.segments[0]
    les = seg.lesion
    assert les is not None
    # The skeleton stops about a radius short of each flat end.
    assert les.distance == pytest.approx(seg.length / 2, abs=4.0)
    assert les.start_distance < les.distance < les.end_distance


def test_curved_tube_stenosis() -> None:
    mask, _ = synth.arc_tube(14, percent=60.0)
    les = _worst(measure_vessels(mask))
    assert abs(les.percent_stenosis - 60.0) <= 3.0
    assert abs(les.mld - 14 * 0.4) <= 0.6
    assert abs(les.rvd - 14) <= 0.6
    # The narrowest point is at the middle of the arc (angle 0: right of the centre).
    size = mask.shape[0]
    c = size / 2 + 0.3
    assert math.hypot(les.x - (c + 120), les.y - c) <= 4.0


def test_bifurcation_finds_the_branch_lesion() -> None:
    mask, truth = synth.bifurcation(14.0, percent=60.0)
    result = measure_vessels(mask, threshold_percent=50.0)
    assert len(result.segments) == 3
    assert {tuple(sorted((s.start_node, s.end_node))) for s in result.segments} == {
        ("end", "junction")
    }
    assert len(result.stenoses) == 1
    les = result.stenoses[0]
    assert abs(les.percent_stenosis - 60.0) <= 3.0
    assert abs(les.mld - truth["mld"]) <= 0.6
    assert math.hypot(les.x - truth["x"], les.y - truth["y"]) <= 4.0
    others = [s.lesion for s in result.segments if s.lesion is not None and s.lesion is not les]
    assert others and all(o.percent_stenosis < 20.0 for o in others)


def test_healthy_tubes_have_no_stenosis_above_20_percent() -> None:
    for mask in (
        synth.straight_tube(12)[0],
        synth.straight_tube(10, angle_deg=37.0)[0],
        synth.arc_tube(16)[0],
        synth.bifurcation(12.0, percent=0.0)[0],
    ):
        result = measure_vessels(mask, threshold_percent=20.0)
        assert result.stenoses == ()
        assert any(s.measured for s in result.segments)


def test_stenoses_sorted_and_threshold_honoured() -> None:
    mask = np.zeros((200, 300), dtype=bool)
    mask = synth.capsule(mask, (40.3, 20.0), (40.3, 280.0), 14.0, percent=70.0)
    mask = synth.capsule(mask, (150.3, 20.0), (150.3, 280.0), 14.0, percent=45.0)
    result = measure_vessels(mask, threshold_percent=30.0)
    pct = [s.percent_stenosis for s in result.stenoses]
    assert len(pct) == 2 and pct == sorted(pct, reverse=True)
    assert abs(pct[0] - 70.0) <= 3.0 and abs(pct[1] - 45.0) <= 3.0
    assert result.stenoses[0].y == pytest.approx(40, abs=2)
    only = measure_vessels(mask, threshold_percent=50.0)
    assert [round(s.percent_stenosis) for s in only.stenoses] == [round(pct[0])]
    assert measure_vessels(mask, threshold_percent=90.0).stenoses == ()


def test_mm_values_are_px_values_times_spacing() -> None:
    mask, _ = synth.straight_tube(12, percent=50.0)
    px = measure_vessels(mask)
    mm = measure_vessels(mask, spacing_mm=0.25)
    assert px.unit == "px" and mm.unit == "mm"
    a, b = _worst(px), _worst(mm)
    for field in ("mld", "rvd", "rvd_proximal_distal_mean", "lesion_length", "distance"):
        assert getattr(b, field) == pytest.approx(getattr(a, field) * 0.25)
    assert b.percent_stenosis == pytest.approx(a.percent_stenosis)
    assert (b.x, b.y) == (a.x, a.y)
    assert mm.segments[0].length == pytest.approx(px.segments[0].length * 0.25)
    assert mm.to_json()["unit"] == "mm"


def test_proximal_distal_reference_reported() -> None:
    mask, _ = synth.straight_tube(16, percent=50.0)
    les = _worst(measure_vessels(mask))
    assert les.rvd_proximal_distal_mean == pytest.approx(16.0, abs=0.6)


def test_to_json_shape() -> None:
    mask, _ = synth.straight_tube(12, percent=60.0)
    out = measure_vessels(mask, spacing_mm=0.3).to_json()
    json.dumps(out)
    assert out["unit"] == "mm"
    assert out["diameter_method"]
    (st,) = out["stenoses"]
    assert st["rvd_method"] == "interpolated"
    assert set(st) >= {
        "percent_stenosis",
        "mld",
        "rvd",
        "rvd_proximal_distal_mean",
        "lesion_length",
        "position",
    }
    assert set(st["position"]) == {"x", "y", "segment", "distance"}
    assert out["segments"][0]["measured"] is True


def test_empty_mask() -> None:
    result = measure_vessels(np.zeros((64, 64), dtype=bool))
    assert result.empty and result.segments == () and result.stenoses == ()
    assert result.message == "no vessel found"
    assert result.to_json()["message"] == "no vessel found"


def test_short_segment_is_skipped() -> None:
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[25:35, 20:40] = 1  # 10 px wide, 20 px long
    result = measure_vessels(mask)
    assert not result.empty
    assert not any(s.measured for s in result.segments)
    assert result.stenoses == ()
    assert result.message == "no segment long enough to measure"
    assert all(s.skip_reason for s in result.segments)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((4, 4, 3), dtype=bool), "2D"),
        (np.array([[0, 2], [1, 0]], dtype=np.uint8), "0 and 1"),
        (np.array([[0, -1], [1, 0]], dtype=np.int16), "0 and 1"),
        (np.zeros((8, 8), dtype=np.float32), "dtype"),
    ],
)
def test_refusals(array: np.ndarray, words: str) -> None:
    with pytest.raises(InvalidMask, match=words) as info:
        measure_vessels(array)
    assert isinstance(info.value, Unprocessable) and info.value.status_code == 422


def test_bad_spacing_refused() -> None:
    with pytest.raises(Unprocessable):
        measure_vessels(np.ones((4, 4), dtype=bool), spacing_mm=0.0)


def test_integer_mask_accepted() -> None:
    mask, _ = synth.straight_tube(12, percent=50.0)
    a = _worst(measure_vessels(mask.astype(np.uint8)))
    b = _worst(measure_vessels(mask))
    assert a.percent_stenosis == pytest.approx(b.percent_stenosis)


SWEEP_WIDTHS = (10, 12, 16, 20)
SWEEP_PERCENTS = (30.0, 50.0, 70.0)


def sweep_errors() -> list[float]:
    """|measured - true| %DS over widths x stenoses, on straight (0 and 30 deg) and arc tubes."""
    errs = []
    for w, pct in itertools.product(SWEEP_WIDTHS, SWEEP_PERCENTS):
        for mask, _ in (
            synth.straight_tube(w, percent=pct),
            synth.straight_tube(w, angle_deg=30.0, percent=pct),
            synth.arc_tube(w, percent=pct),
        ):
            errs.append(abs(_worst(measure_vessels(mask)).percent_stenosis - pct))
    return errs


def test_sweep_mean_absolute_percent_stenosis_error() -> None:
    errs = sweep_errors()
    mae = float(np.mean(errs))
    print(f"%DS MAE over {len(errs)} vessels: {mae:.2f} points (max {max(errs):.2f})")
    assert mae <= 3.0
    assert max(errs) <= 5.0
