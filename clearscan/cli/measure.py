"""`clearscan measure MASK.png`: quantitative coronary angiography on a binary vessel mask."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from clearscan.cli.common import console, fail
from clearscan.errors import ClearScanError
from clearscan.measure import QcaResult, measure_vessels


def _read_mask(path: Path) -> np.ndarray:
    """Any non-zero pixel of the PNG is vessel (in any colour channel; alpha is ignored)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            frames = int(getattr(opened, "n_frames", 1))
            if frames > 1:
                raise fail(f"{path}: holds {frames} frames, expected one 2D image")
            opened.load()
            img = opened.convert("RGBA") if opened.mode == "P" else opened
            bands = img.getbands()
            arr = np.asarray(img)
    except typer.Exit:
        raise
    except FileNotFoundError:
        raise fail(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise fail(f"{path}: not a readable image ({exc})") from None
    if arr.ndim == 3:
        keep = [i for i, b in enumerate(bands) if b != "A"] or [0]
        return np.any(arr[..., keep] != 0, axis=-1)
    if arr.ndim != 2:
        raise fail(f"{path}: not a 2D image")
    return arr != 0


def _print_table(result: QcaResult, threshold: float) -> None:
    u = result.unit
    if result.empty:
        console.print("no vessel found")
        return
    measured = sum(s.measured for s in result.segments)
    console.print(
        f"{len(result.segments)} centreline segments, {measured} measured "
        f"(diameters: {result.diameter_method})"
    )
    if not result.stenoses:
        console.print(f"no stenosis above {threshold:g} %")
        return
    table = Table(title=f"Stenoses >= {threshold:g} %")
    for name in (
        "%DS",
        f"MLD ({u})",
        f"RVD interp. ({u})",
        f"RVD prox/dist ({u})",
        f"lesion length ({u})",
        "x, y",
        "segment",
        f"distance ({u})",
    ):
        table.add_column(name, justify="right")
    for s in result.stenoses:
        table.add_row(
            f"{s.percent_stenosis:.1f}",
            f"{s.mld:.2f}",
            f"{s.rvd:.2f}",
            f"{s.rvd_proximal_distal_mean:.2f}",
            f"{s.lesion_length:.2f}",
            f"{s.x}, {s.y}",
            str(s.segment),
            f"{s.distance:.2f}",
        )
    console.print(table)


def measure(
    mask: Annotated[Path, typer.Argument(help="Binary vessel mask (PNG; non-zero = vessel).")],
    spacing: Annotated[
        float | None,
        typer.Option("--spacing", min=0.0, help="Pixel spacing in mm (isotropic): report in mm."),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option("--threshold", min=0.0, max=100.0, help="Report stenoses from this %DS."),
    ] = 50.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Quantitative coronary angiography: centreline, diameters, MLD, RVD, %DS, lesion length."""
    arr = _read_mask(mask)
    try:
        result = measure_vessels(arr, spacing_mm=spacing, threshold_percent=threshold)
    except ClearScanError as exc:
        raise fail(f"{mask}: {exc}") from None
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        sys.stdout.flush()
        return
    _print_table(result, threshold)
