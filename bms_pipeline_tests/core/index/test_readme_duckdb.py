"""The README's Python snippet for `bms.duckdb`, run as it stands on an indexed collection."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import duckdb
import pytest

from bms_pipeline.core.index import build_dicom_index
from bms_pipeline.core.index.write import write_dicom_index
from bms_pipeline.core.layout import DataLayout
from bms_pipeline_tests.conftest import COLLECTION
from bms_pipeline_tests.pipeline_output import PipelineOutput

README = Path(__file__).resolve().parents[3] / "README.md"


def _snippet() -> str:
    blocks = re.findall(r"```python\n(import duckdb\n.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python snippet that opens bms.duckdb"
    return blocks[0]


@pytest.fixture(scope="module")
def duckdb_path(pipeline_output: PipelineOutput, tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = DataLayout.at(tmp_path_factory.mktemp("readme"))
    shutil.copytree(pipeline_output.dataset.layout.out / "dicom", layout.out / "dicom")
    index = build_dicom_index(
        layout.out / "dicom", COLLECTION.collection_id, COLLECTION.doi, COLLECTION.license
    )
    write_dicom_index(index, layout)
    return layout.duckdb_path


def test_the_readme_python_snippet_runs_on_bms_duckdb(duckdb_path: Path) -> None:
    code = _snippet()
    assert '"data/out/bms.duckdb"' in code
    printed = io.StringIO()
    scope: dict[str, object] = {}
    with contextlib.redirect_stdout(printed):
        exec(code.replace("data/out/bms.duckdb", str(duckdb_path)), scope)  # noqa: S102
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        expected = con.execute(
            "SELECT AnnotationGroupLabel, NumberOfAnnotations FROM ann_group_index "
            "ORDER BY NumberOfAnnotations DESC"
        ).fetchall()
    shown = [tuple(line.split()[:2]) for line in printed.getvalue().splitlines()]
    assert len(expected) > 0
    assert sorted(shown) == sorted((label, str(count)) for label, count in expected)
    assert [int(n) for _, n in shown] == sorted((int(n) for _, n in shown), reverse=True)
