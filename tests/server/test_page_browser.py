"""The page and the API docs in a real browser (Debian's Chromium driven by Playwright), with nothing
fetched from the internet."""

from __future__ import annotations

import re
import shutil

import pytest

from covidct.intended_use import RESEARCH_USE_STATEMENT

# No sandbox (containers), no GPU, and nothing that would call out to the internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_or_skip() -> str:
    """The path of Debian's Chromium on PATH; without one, skip with the command that installs it."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip(
            "no chromium on PATH, so the browser test is skipped; "
            "install it with: sudo apt-get install chromium"
        )
    return path


def test_without_chromium_the_browser_test_is_skipped_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(
        pytest.skip.Exception,
        match=r"^no chromium on PATH, .*; install it with: sudo apt-get install chromium$",
    ):
        chromium_or_skip()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_uploading_a_slice_shows_probability_threshold_and_heatmap(
    browser, live_server, tiny_dataset, predictor, tmp_path
):
    slice_path = tiny_dataset.paths["COVID"][2]
    expected = predictor.predict([slice_path]).predictions[0]
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    requests_outside = []
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith((live_server, "data:", "blob:"))
            else requests_outside.append(request.url)
        ),
    )

    page.goto(live_server)
    page.set_input_files("#files", str(slice_path))
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    page.screenshot(path=tmp_path / "page.png", full_page=True)

    assert page.inner_text("#result-title") == slice_path.name
    assert page.inner_text("#probability") == f"P(COVID) = {expected.prob_covid:.3f}"
    assert page.inner_text("#label") == expected.label
    assert re.match(
        rf"^Threshold {predictor.threshold:.3f}: (at or above|below) it\.", page.inner_text("#threshold")
    )
    assert page.is_visible("#overlay") and page.is_visible("#preview")
    assert page.evaluate("document.getElementById('overlay').naturalWidth") == 256  # the base64 PNG decoded
    assert page.inner_text("#ruo") == RESEARCH_USE_STATEMENT
    assert requests_outside == []
    assert (tmp_path / "page.png").stat().st_size > 10_000
    page.close()


def test_a_bad_upload_shows_the_reason(browser, live_server, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page = browser.new_page()

    page.goto(live_server)
    page.set_input_files("#files", str(notes))
    page.wait_for_selector("#status.error", timeout=30_000)

    assert page.inner_text("#status") == (
        "Error 415: notes.txt: unsupported file type (content starting "
        "b'not an i'); expected PNG, JPEG, BMP, TIFF, DICOM or NIfTI"
    )
    assert page.is_hidden("#result")
    page.close()


def test_the_api_docs_render_offline(browser, live_server):
    page = browser.new_page()
    requests_outside = []
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith((live_server, "data:")) else requests_outside.append(request.url)
        ),
    )

    page.goto(f"{live_server}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)

    assert sorted(page.locator(".opblock-summary-path").all_inner_texts()) == [
        "/api/v1/model",
        "/api/v1/predict",
        "/healthz",
    ]
    assert requests_outside == []
    page.close()
