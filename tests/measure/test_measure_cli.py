"""`clearscan measure MASK.png` through the CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clearscan.cli.main import app
from clearscan.measure import measure_vessels
from tests.measure import synth

runner = CliRunner()


@pytest.fixture
def stenosis_png(tmp_path: Path) -> Path:
    mask, _ = synth.straight_tube(14, angle_deg=30.0, percent=60.0)
    path = tmp_path / "vessel.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def _json(output: str) -> dict:  # type: ignore[type-arg]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return json.loads(lines[0])


def test_json_output(stenosis_png: Path) -> None:
    result = runner.invoke(app, ["measure", str(stenosis_png), "--json"])
    assert result.exit_code == 0, result.output
    out = _json(result.stdout)
    assert out["unit"] == "px"
    (st,) = out["stenoses"]
    assert abs(st["percent_stenosis"] - 60.0) <= 3.0
    assert abs(st["mld"] - 14 * 0.4) <= 0.6
    assert abs(st["rvd"] - 14) <= 0.6
    assert st["rvd_method"] == "interpolated"


def test_spacing_gives_mm(stenosis_png: Path) -> None:
    px = _json(runner.invoke(app, ["measure", str(stenosis_png), "--json"]).stdout)
    result = runner.invoke(app, ["measure", str(stenosis_png), "--json", "--spacing", "0.2"])
    assert result.exit_code == 0, result.output
    mm = _json(result.stdout)
    assert mm["unit"] == "mm"
    assert mm["stenoses"][0]["mld"] == pytest.approx(px["stenoses"][0]["mld"] * 0.2, abs=2e-3)
    assert mm["stenoses"][0]["percent_stenosis"] == px["stenoses"][0]["percent_stenosis"]


def test_threshold_and_table(stenosis_png: Path) -> None:
    result = runner.invoke(app, ["measure", str(stenosis_png)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    expected = measure_vessels(np.asarray(Image.open(stenosis_png)) > 0).stenoses[0]
    assert "Stenoses >= 50 %" in text and f"{expected.percent_stenosis:.1f}" in text
    high = runner.invoke(app, ["measure", str(stenosis_png), "--threshold", "80"])
    assert high.exit_code == 0
    assert "no stenosis above 80 %" in " ".join(high.stdout.split())
    assert (
        _json(
            runner.invoke(app, ["measure", str(stenosis_png), "--json", "--threshold", "80"]).stdout
        )["stenoses"]
        == []
    )


def test_empty_mask(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(path)
    result = runner.invoke(app, ["measure", str(path)])
    assert result.exit_code == 0
    assert "no vessel found" in result.stdout
    out = _json(runner.invoke(app, ["measure", str(path), "--json"]).stdout)
    assert out["segments"] == [] and out["message"] == "no vessel found"


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.png"
    path.write_bytes(b"not a png at all")
    result = runner.invoke(app, ["measure", str(path)])
    assert result.exit_code == 1
    assert "not a readable image" in " ".join(result.output.split())


def test_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["measure", str(tmp_path / "nope.png")])
    assert result.exit_code == 1
    assert "no such file" in " ".join(result.output.split())
