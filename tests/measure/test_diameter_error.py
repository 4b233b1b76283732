"""The diameter method's error on binary tubes of known width 3..20 px (the table in
docs/measure.md comes from ``python -m tests.measure.diameter_table``)."""

from __future__ import annotations

import pytest

from tests.measure.diameter_table import WIDTHS, errors


@pytest.mark.parametrize("width", WIDTHS)
def test_profile_diameter_error(width: int) -> None:
    for shape, (mean, worst) in errors(width).items():
        assert abs(mean) <= 0.15, (shape, mean)
        assert worst <= 0.6, (shape, worst)
