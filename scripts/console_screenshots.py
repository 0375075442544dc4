"""Screenshots of the console's main pages, for docs/console.md.

    .venv/bin/python scripts/console_screenshots.py [--home PATH] [--out docs/console]

Without ``--home`` it runs ``passerelle demo --fast`` into a temporary folder first (a few
minutes: it trains three models, serves traffic and replays two days of drifting customers),
then serves that store with ``passerelle serve``'s application on a free loopback port and
photographs each page at 1440 by 900 with Debian's chromium (``make chromium`` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
#: file name, path, what must be on the page before it is photographed
PAGES = (
    ("overview.png", "/", "#endpoints table"),
    ("endpoint.png", "/endpoints/churn-api", "#latency-chart svg"),
    ("monitoring.png", "/endpoints/churn-api/monitoring", "#heatmap svg"),
    ("alerts.png", "/alerts?state=all", "#alert-list"),
    ("models.png", "/models/churn", "table"),
    ("version.png", "/models/churn/{champion}", "#lineage svg"),
)


def console_app(home: Path) -> Any:
    """The application ``passerelle serve`` runs, with the console's routes."""
    from passerelle import ui
    from passerelle.serving.app import create_serving_app
    from passerelle.settings import Settings

    app = create_serving_app(Settings(home=home), worker="screenshots", background=False)
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        app.include_router(ui.router)
    return app


@contextlib.contextmanager
def demo_home(given: str | None) -> Iterator[Path]:
    if given:
        yield Path(given)
        return
    from passerelle.demo.run import run_demo

    with tempfile.TemporaryDirectory(prefix="passerelle-console-") as folder:
        home = Path(folder) / "home"
        run_demo(fast=True, home=str(home))
        yield home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="an existing passerelle home to photograph (default: a fresh demo)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "console"), help="where the PNG files go")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: run `make chromium` first", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from passerelle.client import LocalClient
    from passerelle.serving.server import background_server
    from passerelle.settings import Settings

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with demo_home(args.home) as home, background_server(console_app(home)) as url, sync_playwright() as p:
        with LocalClient(Settings(home=home)) as client:
            champion = client.get_version("churn@champion").number
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            for name, path, ready in PAGES:
                page.goto(url + path.format(champion=champion))
                page.wait_for_selector(ready)
                page.screenshot(path=str(out / name), full_page=False)
                print(f"{out / name}")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
