"""A changed series reaches an Orthanc with its default configuration (it keeps the first
object stored under a UID) under its new UIDs; the superseded series are listed."""

from __future__ import annotations

import base64
import hashlib
import urllib.request
from pathlib import Path

import dagster as dg
import pydicom
import pytest

from bms_pipeline.cli import main
from bms_pipeline.core.dicomweb.config import PASSWORD_ENV, URL_ENV, USER_ENV
from bms_pipeline_tests.orthanc import PASSWORD, USER, missing_reason, running_orthanc


def test_a_moved_box_is_served_under_new_uids_by_a_default_orthanc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    for name in (URL_ENV, "DAGSTER_HOME", "BMS_DATA_ROOT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    # Orthanc's default: a second object under a stored SOP Instance UID is not stored.
    with running_orthanc(tmp_path / "orthanc", extra={"OverwriteInstances": False}) as server:
        root = tmp_path / "data"
        assert main(["demo-data", "--data-root", str(root), "--slides", "1", "--seed", "4"]) == 0
        args = ["run", "--data-root", str(root), "--dicomweb-url", server.dicomweb_url]
        assert main(args) == 0, capsys.readouterr().out
        (slide,) = [p.stem for p in (root / "raw" / "slides").glob("*.mrxs")]
        consensus = root / "out" / "dicom" / slide / "ann" / "consensus.dcm"
        old_series = str(pydicom.dcmread(consensus, stop_before_pixels=True).SeriesInstanceUID)

        cells = root / "raw" / "annotations" / "cells.csv"
        lines = cells.read_text(encoding="utf-8").splitlines(keepends=True)
        fields = lines[1].split(",")
        fields[3], fields[5] = str(int(fields[3]) + 3), str(int(fields[5]) + 3)
        lines[1] = ",".join(fields)
        cells.write_text("".join(lines), encoding="utf-8")
        assert main(args) == 0, capsys.readouterr().out

        new = pydicom.dcmread(consensus)
        assert str(new.SeriesInstanceUID) != old_series
        # The server holds the new version, byte for byte, under its new UIDs.
        found = server.rest("/tools/lookup", method="POST", data=str(new.SOPInstanceUID).encode())
        assert isinstance(found, list) and found, "the new version is not on the server"
        request = urllib.request.Request(f"{server.url}{found[0]['Path']}/file")
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            served = response.read()
        assert hashlib.sha256(served).digest() == hashlib.sha256(consensus.read_bytes()).digest()
        # The superseded series is listed for retraction by the DICOMweb asset.
        with dg.DagsterInstance.from_config(str(root / ".dagster")) as instance:
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey("dicomweb_series"), asset_partitions=[slide]
                ),
                limit=1,
            ).records[0]
            assert record.asset_materialization is not None
            superseded = record.asset_materialization.metadata["superseded_series"].value
        assert isinstance(superseded, list) and old_series in superseded
