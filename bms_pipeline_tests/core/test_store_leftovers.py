"""What a killed writer leaves is recognised by the names `core.atomic_outputs` gives it, found in the
folders `DataLayout` names: the rule that removes it (`remove_stale_outputs`) copies neither."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from bms_pipeline.core.atomic_outputs import (
    _temp_beside,  # the name under test: what every atomic write of core.atomic_outputs uses
    leftovers,
    replace_dir_atomically,
    temp_file_writer,
)
from bms_pipeline.core.layout import DataLayout


def test_a_temporary_file_names_its_writer(tmp_path: Path) -> None:
    tmp = _temp_beside(tmp_path / "bms.duckdb")
    assert temp_file_writer(tmp.name) == os.getpid()
    assert temp_file_writer(f"{tmp.name}.wal") == os.getpid()  # DuckDB's log beside it
    for other in ("bms.duckdb", ".bms.duckdb.kept", f".x.{os.getpid()}.tmp", "index.parquet"):
        assert temp_file_writer(other) is None, other


@pytest.mark.parametrize("out_elsewhere", [False, True])
def test_leftovers_are_found_where_the_layout_writes(tmp_path: Path, out_elsewhere: bool) -> None:
    layout = DataLayout(tmp_path / "root", tmp_path / "out" if out_elsewhere else None)
    sm = layout.sm_dir("P_1_bm")
    sm.mkdir(parents=True)
    (sm / "a.dcm").write_bytes(b"old")
    staged = layout.staging_dir / f"P_1_bm-{uuid.uuid4().hex}"
    staged.mkdir(parents=True)
    (staged / "a.dcm").write_bytes(b"new")
    retired = sm.parent / f".retired-sm-{uuid.uuid4().hex[:8]}"
    retired.mkdir()  # as a swap killed between its two renames leaves it
    layout.tables_dir.mkdir(parents=True)
    temp = _temp_beside(layout.table_parquet("index"))
    temp.write_bytes(b"half")
    kept = layout.table_parquet("index")
    kept.write_bytes(b"whole")

    found = leftovers(layout)
    assert set(found.unowned) == {staged, retired}
    assert found.temp_files == (temp,)
    assert kept not in found.temp_files

    retired.rmdir()
    other = layout.staging_dir / "other"
    other.mkdir()
    replace_dir_atomically(staged, sm)  # a completed swap leaves no retired folder
    assert set(leftovers(layout).unowned) == {other}
    assert (sm / "a.dcm").read_bytes() == b"new"
