"""StorageRoot on a real S3 API (moto's server): publish, fetch, and uploads in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from bms_pipeline.core.url_roots import StorageRoot

pytestmark = pytest.mark.live


def test_an_upload_in_flight_is_never_listed_or_fetched(
    tmp_path: Path, s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    fs = s3.filesystem()
    bucket = s3.new_bucket()
    writer = StorageRoot.of(f"s3://{bucket}/out", tmp_path / "writer")
    series = writer.local_root / "dicom" / "P_1_bm" / "sm"
    series.mkdir(parents=True)
    (series / "a.dcm").write_bytes(b"a" * 64)
    writer.publish("dicom/P_1_bm")
    # Another slide of the patient is being uploaded (its partial beside its target).
    fs.pipe(f"{bucket}/out/dicom/P_2_bm.partial-0123456789ab/sm/b.dcm", b"b" * 64)

    reader = StorageRoot.of(f"s3://{bucket}/out", tmp_path / "reader")
    assert sorted(reader.listing("dicom")) == ["dicom/P_1_bm/sm/a.dcm"]
    local = reader.fetch("dicom")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "P_1_bm/sm/a.dcm"
    ]
    # Replacing a series: old objects the new version lacks are gone, no partial is left.
    (series / "a.dcm").unlink()
    (series / "c.dcm").write_bytes(b"c" * 64)
    writer.publish("dicom/P_1_bm")
    fs.invalidate_cache()
    assert sorted(fs.find(f"{bucket}/out/dicom/P_1_bm")) == [f"{bucket}/out/dicom/P_1_bm/sm/c.dcm"]
