"""The screenshots of README.md and docs/reports.md: the report's first sections and the dashboard's study page.

    tuner report --study studies/nips.toml --storage URL -o report.html
    tuner dashboard --study studies/nips.toml --storage URL --port 8080 &
    python docs/screenshots.py report.html http://127.0.0.1:8080/dashboard/studies/1

Drives Debian's chromium headless (as the browser tests do) and writes ``docs/report.png`` and
``docs/dashboard.png``, reduced to a 256-colour palette to keep them small.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _small(path: Path, width: int = 1000) -> None:
    image = Image.open(path).convert("RGB")
    image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main(report: str, dashboard: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(Path(report).resolve().as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0")
        bottom = page.evaluate("document.getElementById('savings').getBoundingClientRect().bottom + window.scrollY")
        page.screenshot(path=str(DOCS / "report.png"), full_page=True,
                        clip={"x": 0, "y": 0, "width": 1280, "height": bottom})
        page.goto(dashboard)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(DOCS / "dashboard.png"))
        browser.close()
    _small(DOCS / "report.png")
    _small(DOCS / "dashboard.png")


if __name__ == "__main__":
    main(*sys.argv[1:3])
