"""A static page opened in headless Chromium (driven by playwright-core), for the tests of
the collection page: what each slide row shows, and every error the browser saw."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "static_page.mjs"
NODE_MODULES = Path(__file__).parent / "dicomweb" / "viewer" / "node_modules"
ARTIFACTS = REPO / "artifacts" / "qc"


def browser_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if (shutil.which("chromium") or shutil.which("chromium-browser")) is None:
        return "Debian's chromium is not installed"
    if not (NODE_MODULES / "playwright-core").is_dir():
        return "playwright-core is not installed (npm ci in bms_pipeline_tests/dicomweb/viewer)"
    return None


def open_page(page: Path, tmp_path: Path, shot_name: str) -> dict:
    """Load `page` from its file URL; the RESULT the script printed, as a dict."""
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / shot_name
    done = subprocess.run(
        [
            "node",
            str(SCRIPT),
            page.resolve().as_uri(),
            str(shot),
            str(chromium),
            str(tmp_path / "chromium-profile"),
            str(NODE_MODULES),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 5_000
    return json.loads(lines[-1].removeprefix("RESULT "))
