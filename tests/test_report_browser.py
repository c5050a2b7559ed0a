"""The HTML report in a real browser: headless Chromium (the system's, driven by Playwright)
renders every plot, shows the tables and logs no console error.

The report is rewritten from the committed sample run (results.parquet, manifest, vectors)
by today's ``write_report``, so the page checked is what the code writes now.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.evaluation.report import write_report

SAMPLE_RUN = Path(__file__).parents[1] / "reports" / "sample"
RUN_FILES = ("results.parquet", "manifest.json", "vectors.safetensors")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium on PATH (.ci/run installs Debian's chromium when it runs as root); "
        "install it with `apt-get install -y chromium`"
    )


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(tmp_path):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    browser_path = _chromium()
    for name in RUN_FILES:
        shutil.copy2(SAMPLE_RUN / name, tmp_path / name)
    page_path = write_report(tmp_path).parent / "report.html"
    assert page_path.is_file()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True)
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(page_path.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all(
                "img", "images => images.map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            tables = page.eval_on_selector_all("table", "tables => tables.length")
            rows = page.eval_on_selector_all("table tr", "rows => rows.length")
        finally:
            browser.close()
    assert len(widths) >= 3, widths
    assert all(complete and width > 0 for _, complete, width in widths), widths
    assert tables >= 1 and rows > tables, (tables, rows)
    assert problems == []
