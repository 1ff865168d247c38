"""The fsspec options a root gets from its URL."""

from __future__ import annotations

from pathlib import Path

from bms_pipeline.core.url_roots import S3_PARTS_IN_FLIGHT, StorageRoot, storage_options


def test_an_s3_root_uploads_few_parts_at_once(tmp_path: Path) -> None:
    # s3fs's default (10 parts in flight) held ~1 GiB for a 600 MB upload; the root's own
    # filesystem must carry the bound, as every publish goes through it.
    root = StorageRoot.of("s3://bms-bucket/out", scratch=tmp_path)
    assert getattr(root.fs, "max_concurrency", None) == S3_PARTS_IN_FLIGHT
    assert S3_PARTS_IN_FLIGHT < 10


def test_other_roots_get_no_s3_options(tmp_path: Path) -> None:
    assert storage_options(str(tmp_path)) == {}
    assert storage_options(f"file://{tmp_path}") == {}
    assert storage_options("memory://bms/out") == {}
    assert StorageRoot.of(tmp_path, scratch=tmp_path / "scratch").is_local
