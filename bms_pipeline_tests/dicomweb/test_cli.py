"""`bms-pipeline run --dicomweb-url` as a user runs it, twice, against a real Orthanc."""

from __future__ import annotations

from pathlib import Path

import pytest

from bms_pipeline.cli import main
from bms_pipeline.core.dicomweb.config import PASSWORD_ENV, URL_ENV, USER_ENV
from bms_pipeline_tests.orthanc import PASSWORD, USER, OrthancServer


def test_run_publishes_every_instance_once_and_a_second_run_stores_nothing(
    empty_orthanc: OrthancServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    # The CLI exports these for its worker processes: recorded here so that they are restored.
    for name in (URL_ENV, "DAGSTER_HOME", "BMS_DATA_ROOT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    root = tmp_path / "data"
    assert main(["demo-data", "--data-root", str(root), "--slides", "1", "--seed", "3"]) == 0
    args = ["run", "--data-root", str(root), "--dicomweb-url", empty_orthanc.dicomweb_url]
    assert main(args) == 0
    first = capsys.readouterr().out
    files = sorted((root / "out" / "dicom").rglob("*.dcm"))
    assert f"publishing to {empty_orthanc.dicomweb_url} (--dicomweb-url)" in first
    assert files and empty_orthanc.instance_count() == len(files)
    stored = empty_orthanc.rest("/statistics")["TotalDiskSize"]  # pyright: ignore[reportIndexIssue]
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "1/1 slides ok" in second and "fresh" in second
    assert empty_orthanc.instance_count() == len(files)
    assert empty_orthanc.rest("/statistics")["TotalDiskSize"] == stored  # pyright: ignore[reportIndexIssue]


def test_credentials_in_the_url_publish_yet_appear_in_no_byte_and_no_console_line(
    empty_orthanc: OrthancServer, tmp_path: Path
) -> None:
    """A user who puts user:password into --dicomweb-url: the slides are published (the
    credentials reach the HTTP session), and the password shows nowhere: not on the console
    of either run, not under out/, not in the instance (SQLite cells inflated too)."""
    import os
    import subprocess
    import sys

    from bms_pipeline_tests.privacy import places_holding

    root = tmp_path / "data"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", URL_ENV, USER_ENV, PASSWORD_ENV, "BMS_DICOMWEB_TOKEN")
    }
    cli = [sys.executable, "-m", "bms_pipeline.cli"]
    subprocess.run(
        [*cli, "demo-data", "--data-root", str(root), "--slides", "1", "--seed", "5"],
        check=True,
        env=env,
        capture_output=True,
    )
    url = empty_orthanc.dicomweb_url.replace("http://", f"http://{USER}:{PASSWORD}@")
    consoles = []
    for _ in range(2):
        done = subprocess.run(
            [*cli, "run", "--data-root", str(root), "--dicomweb-url", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        consoles.append(done.stdout + done.stderr)
    files = sorted((root / "out" / "dicom").rglob("*.dcm"))
    assert files and empty_orthanc.instance_count() == len(files)
    assert f"publishing to {empty_orthanc.dicomweb_url} (--dicomweb-url)" in consoles[0]
    assert "privacy audit: no identifying value found" in consoles[1]
    for value in (PASSWORD, f"{USER}:{PASSWORD}"):
        assert all(value not in console for console in consoles)
        assert places_holding([root / "out", root / ".dagster"], value) == []
