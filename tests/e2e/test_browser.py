"""End to end in Chromium against a real server: admin creates a clinician, the clinician uploads
a 16-bit DICOM, inspects the heatmap overlay and reviews the result, the admin finds the review
in the audit trail. No console errors and no CSP violations on any page visited.

Screenshots land in tests/e2e/artifacts/ (look at them after UI changes)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from clearscan.app import create_app
from clearscan.config import Settings
from tests.conftest import ADMIN_PASSWORD, chest_like, dicom_bytes

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CLINICIAN, CLINICIAN_PASSWORD = "dr.grey", "clinician-password-42"
# Report CSP violations on the console, where the test collects them. Init scripts run outside
# the page's CSP, so this listener itself is not blocked.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("e2e-data")
    settings = Settings(
        data_dir=data,
        admin_password=ADMIN_PASSWORD,
        secret_key="e2e-secret-key-that-is-long-enough-0123456789",
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CLEARSCAN_E2E_REQUIRED") == "1":
            pytest.fail(f"{CHROMIUM} is missing and CLEARSCAN_E2E_REQUIRED=1")
        pytest.skip(f"{CHROMIUM} is not installed")
    if os.environ.get("CLEARSCAN_E2E_REQUIRED") != "1":
        pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _login(page: Any, base_url: str, username: str, password: str, shot: str = "") -> None:
    page.goto(f"{base_url}/login")
    if shot:
        page.screenshot(path=str(ARTIFACTS / shot))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_test_id("sign-in").click()
    page.wait_for_url(lambda url: "/login" not in url)


def _sign_out(page: Any) -> None:
    page.get_by_test_id("sign-out").click()
    page.wait_for_url("**/login")


def _images_loaded(page: Any) -> None:
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid=preview], [data-testid=heatmap]')]
               .every((img) => img.complete && img.naturalWidth > 0)""",
        timeout=15_000,
    )


def test_clinician_flow(browser: Any, base_url: str, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1366, "height": 860}, reduced_motion="reduce")
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"{page.url}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"{page.url}: page error {e}"))

    # Admin creates a clinician.
    _login(page, base_url, "admin", ADMIN_PASSWORD, shot="login.png")
    assert page.url.endswith("/analyze")
    page.get_by_test_id("nav-users").click()
    page.get_by_test_id("new-username").fill(CLINICIAN)
    page.get_by_test_id("new-password").fill(CLINICIAN_PASSWORD)
    page.get_by_test_id("new-role").select_option("clinician")
    page.get_by_test_id("create-user").click()
    page.get_by_test_id("success-message").wait_for()
    assert page.locator(f'[data-testid=user-row][data-username="{CLINICIAN}"]').count() == 1
    page.screenshot(path=str(ARTIFACTS / "users.png"))
    _sign_out(page)

    # The clinician uploads a 16-bit, non-square DICOM (384 rows x 512 columns): the model sees
    # the centre square, x 64..448, so the heatmap must cover exactly that part of the image.
    _login(page, base_url, CLINICIAN, CLINICIAN_PASSWORD)
    assert page.get_by_test_id("current-role").text_content() == "clinician"
    dcm = tmp_path / "chest.dcm"
    dcm.write_bytes(dicom_bytes(chest_like(512, seed=7)[64:448, :], bits=16))
    page.get_by_test_id("file-input").set_input_files(str(dcm))
    assert "chest.dcm" in page.get_by_test_id("file-list").inner_text()
    page.get_by_label("Patient reference").fill("E2E-0001")
    page.screenshot(path=str(ARTIFACTS / "analyze.png"))
    page.get_by_test_id("analyze-submit").click()
    page.wait_for_url("**/cases/*")
    _images_loaded(page)

    heat = page.get_by_test_id("heatmap")
    assert heat.get_attribute("data-box") == "64,0,448,384"
    img_box = page.get_by_test_id("preview").bounding_box()
    heat_box = heat.bounding_box()
    assert img_box and heat_box and img_box["width"] > 200
    sx, sy = img_box["width"] / 512, img_box["height"] / 384
    assert heat_box["x"] == pytest.approx(img_box["x"] + 64 * sx, abs=1.5)
    assert heat_box["y"] == pytest.approx(img_box["y"], abs=1.5)
    assert heat_box["width"] == pytest.approx(384 * sx, abs=1.5)
    assert heat_box["height"] == pytest.approx(384 * sy, abs=1.5)

    opacity = "el => getComputedStyle(el).opacity"
    assert float(heat.evaluate(opacity)) == pytest.approx(0.45)
    page.get_by_test_id("opacity").fill("80")
    assert float(heat.evaluate(opacity)) == pytest.approx(0.8)
    page.get_by_test_id("heatmap-toggle").uncheck()
    assert heat.evaluate("el => getComputedStyle(el).visibility") == "hidden"
    page.get_by_test_id("heatmap-toggle").check()

    # Contrast preset swaps the preview source; the new rendering loads.
    page.get_by_test_id("presets").get_by_role("button", name="Auto").click()
    page.wait_for_function(
        """() => { const i = document.querySelector('[data-testid=preview]');
                   return i.src.endsWith('?preset=auto') && i.complete && i.naturalWidth > 0; }"""
    )
    page.get_by_test_id("opacity").fill("45")
    page.get_by_test_id("presets").get_by_role("button", name="Default").click()
    _images_loaded(page)
    page.screenshot(path=str(ARTIFACTS / "case.png"), full_page=True)

    # Disagree, with the correct label and a comment.
    top = page.get_by_test_id("top-label").locator(".chip").inner_text().strip()
    other = next(lb for lb in ("normal", "pneumonia") if lb != top)
    form = page.get_by_test_id("review-form")
    assert form.get_by_test_id("correct-label").is_hidden()
    form.get_by_test_id("verdict-disagree").check()
    form.get_by_test_id("correct-label").select_option(other)
    form.get_by_test_id("review-comment").fill("Lungs look clear to me; e2e review.")
    form.get_by_test_id("review-submit").click()
    page.wait_for_url("**/cases/*#prediction-*")
    review = page.get_by_test_id("review").first
    assert "Disagrees" in review.inner_text() and CLINICIAN in review.inner_text()
    assert other in review.inner_text() and "e2e review" in review.inner_text()
    page.get_by_test_id("prediction").screenshot(path=str(ARTIFACTS / "reviewed.png"))

    page.get_by_test_id("nav-cases").click()
    assert page.get_by_test_id("case-row").count() == 1
    assert "E2E-0001" in page.get_by_test_id("case-row").inner_text()
    page.screenshot(path=str(ARTIFACTS / "cases.png"), full_page=True)
    _sign_out(page)

    # The admin sees the review in the audit trail, with an intact chain.
    _login(page, base_url, "admin", ADMIN_PASSWORD)
    page.get_by_test_id("nav-audit").click()
    page.get_by_label("Action").fill("review.create")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url("**/admin/audit?*action=review.create*")
    rows = page.locator('[data-testid=audit-row][data-action="review.create"]')
    assert rows.count() == 1
    assert rows.first.get_attribute("data-actor") == CLINICIAN
    assert "Chain intact" in page.get_by_test_id("chain-status").inner_text()
    page.goto(f"{base_url}/admin/audit")
    page.screenshot(path=str(ARTIFACTS / "audit.png"))
    page.get_by_test_id("nav-models").click()
    page.locator("a", has_text="pneumonia-cxr").first.click()
    page.get_by_test_id("model-card").wait_for()
    page.screenshot(path=str(ARTIFACTS / "model.png"), full_page=True)
    context.close()

    assert problems == []
