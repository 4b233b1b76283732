"""The segmentation overlay in Chromium: a DICOM with non-square pixels (PixelSpacing 0.2 x 0.3
mm) stored MONOCHROME1, analysed by a segmentation model; the case page draws the label map on a
canvas of the image's size laid exactly over the preview (same box on screen), coloured where the
vessel is and nowhere else, as a fill or an outline; the areas and the spacing's source are
shown. No console errors and no CSP violations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.cases.test_segmentation_api import package_zip
from tests.conftest import ADMIN_PASSWORD, dicom_bytes
from tests.e2e.test_browser import CSP_LISTENER, _login, base_url, browser  # noqa: F401
from tests.inference.test_segmentation import picture

pytestmark = pytest.mark.e2e

H, W = 120, 200
ROWS, COLS = slice(40, 70), slice(20, 180)  # the vessel


def analysed_case(base: str, tmp_path: Path) -> str:
    """Import and activate the segmentation model, analyse the DICOM; the case id."""
    with httpx.Client(base_url=base, timeout=60) as http:
        r = http.post("/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD})
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = http.post(
            "/api/v1/models",
            headers=headers,
            files={"file": ("vessels.zip", package_zip(tmp_path), "application/zip")},
        )
        assert r.status_code == 201, r.text
        r = http.post("/api/v1/models/vessels/versions/1.0.0/activate", headers=headers)
        assert r.status_code == 200, r.text
        # MONOCHROME1: stored values are inverted (high = dark), so the vessel is stored bright
        dark = picture(H, W, [(ROWS, COLS)]) < 128
        data = dicom_bytes(
            np.where(dark, 0.9, 0.1),
            modality="XA",
            PhotometricInterpretation="MONOCHROME1",
            PixelSpacing=[0.2, 0.3],
        )
        r = http.post(
            "/api/v1/predict",
            headers=headers,
            data={"model": "vessels"},
            files=[("file", ("a.dcm", data, "application/dicom"))],
        )
        assert r.status_code == 200, r.text
        pred = r.json()["predictions"][0]
        assert pred["area_px"]["vessel"] > 0.9 * 30 * 160
        return str(r.json()["case_id"])


def test_the_mask_overlay_is_aligned_filled_and_outlined(browser: Any, base_url: str, tmp_path):  # noqa: F811
    case_id = analysed_case(base_url, tmp_path)
    context = browser.new_context(viewport={"width": 1366, "height": 860}, reduced_motion="reduce")
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"{page.url}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"{page.url}: page error {e}"))
    _login(page, base_url, "admin", ADMIN_PASSWORD)
    page.goto(f"{base_url}/cases/{case_id}")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=mask]')?.dataset.drawn === 'fill'"
    )
    page.wait_for_function(
        "() => { const p = document.querySelector('[data-testid=preview]');"
        " return p.complete && p.naturalWidth > 0; }"
    )
    # the canvas covers exactly the preview on screen
    boxes = page.evaluate(
        """() => ['preview', 'mask'].map((id) => {
             const r = document.querySelector(`[data-testid=${id}]`).getBoundingClientRect();
             return [r.left, r.top, r.width, r.height]; })"""
    )
    assert boxes[0] == pytest.approx(boxes[1], abs=0.5), boxes
    painted = """() => { const c = document.querySelector('[data-testid=mask]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const out = []; for (let i = 3; i < d.length; i += 4) out.push(d[i] > 0 ? 1 : 0);
        return [c.width, c.height, out]; }"""
    w, h, alpha = page.evaluate(painted)
    assert (w, h) == (W, H)
    drawn = np.array(alpha, bool).reshape(H, W)
    truth = np.zeros((H, W), bool)
    truth[ROWS, COLS] = True
    assert (drawn != truth).mean() < 0.02  # the vessel's pixels, edges up to resampling
    assert drawn[55, 100] and not drawn[10, 100] and not drawn[100, 10]
    page.get_by_test_id("mask-outline").check()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=mask]').dataset.drawn === 'outline'"
    )
    _, _, alpha = page.evaluate(painted)
    outline = np.array(alpha, bool).reshape(H, W)
    # exactly the filled pixels with a 4-neighbour outside the class (or on the image's edge)
    padded = np.pad(drawn, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    assert np.array_equal(outline, drawn & ~inner)
    assert not outline[55, 100] and outline.sum() < 0.2 * drawn.sum()
    areas = page.get_by_test_id("areas").inner_text().lower()
    assert "vessel area" in areas and "mm²" in areas and "(pixelspacing)" in areas
    page.screenshot(path=str(Path(__file__).resolve().parent / "artifacts" / "segmentation.png"))
    context.close()
    assert problems == []
