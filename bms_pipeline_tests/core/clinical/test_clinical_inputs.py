"""Bad clinical and lab inputs (issue 25) and privacy through the tables (issue 26), each
tried with real files: UTF-16 and Latin-1 CSVs, xlsxwriter workbooks with merged headers,
text and numeric cells, a small zip that declares gigabytes, a second process holding the
DuckDB file open for writing, and names planted in free-text columns and a lab cell.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import duckdb
import polars as pl
import pytest
import xlsxwriter

from bms_pipeline.core.atomic_outputs import OutputWriteError
from bms_pipeline.core.clinical.lab_cells import LAB_SHEET, read_lab_values, reference_label
from bms_pipeline.core.clinical.patients import ClinicalDataError, read_clinical_source
from bms_pipeline.core.clinical.qa import free_text_phi_columns
from bms_pipeline.core.clinical.tables import build_clinical_tables, write_outputs
from bms_pipeline.core.layout import DataLayout
from bms_pipeline_tests.core.clinical.test_clinical_tables import (
    COLLECTION,
    LAB_COLUMNS,
    NASTY_ROWS,
    P1,
    P2,
    P3,
    P4,
    TARGET,
    write_nasty_clinical_csv,
    write_nasty_lab_xlsx,
)

HEADER = "patient_id;gender;age;leukemia_type;leukemia_subtype;ncit_concept_code"
ROWS = [
    f"{P1};female;7;ALL;B-ALL;C8644",
    f"{P2};male;012Y;AML;Überlappung;C3171",  # a non-ASCII character, for the encodings
    f"{P3};other;3;;;",
    f"{P4};female;006M;CML;BCR-ABL1 positive;C3174",
]
PLANTED = ("Erika Mustermann", "Hans Gruber", "Station Kinderklinik 3B", "Lieselotte")


def _clinical(layout: DataLayout, text: str, encoding: str) -> None:
    layout.clinical_csv.parent.mkdir(parents=True, exist_ok=True)
    layout.clinical_csv.write_bytes(text.encode(encoding))


def _layout(tmp_path: Path) -> DataLayout:
    layout = DataLayout.at(tmp_path / "root")
    write_nasty_clinical_csv(layout.clinical_csv)
    write_nasty_lab_xlsx(layout.lab_values_xlsx)
    return layout


# --------------------------------------------------------------------------- clinical.csv


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig", "utf-8"])
def test_clinical_csv_in_utf16_with_a_bom_or_utf8_reads_the_same(
    tmp_path: Path, encoding: str
) -> None:
    layout = _layout(tmp_path)
    text = "\r\n".join([HEADER, *ROWS]) + "\r\n"
    if encoding == "utf-16-be":
        layout.clinical_csv.write_bytes(b"\xfe\xff" + text.encode("utf-16-be"))
    else:
        _clinical(layout, text, encoding)
    source = read_clinical_source(layout.clinical_csv)
    assert list(source.patients) == [P1, P2, P3, P4]
    assert source.rows[1]["leukemia_subtype"] == "Überlappung"


def test_clinical_csv_in_latin1_is_an_error_naming_file_line_and_byte(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    _clinical(layout, "\n".join([HEADER, *ROWS]) + "\n", "latin-1")
    with pytest.raises(ClinicalDataError) as caught:
        read_clinical_source(layout.clinical_csv)
    message = str(caught.value)
    assert str(layout.clinical_csv) in message
    assert "line 3" in message and "0xdc is not UTF-8" in message
    assert "Latin-1" in message
    assert "berlappung" not in message  # the text around the byte is not shown


def test_utf16_without_a_bom_is_named(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    _clinical(layout, "\n".join([HEADER, *ROWS]), "utf-16-le")
    with pytest.raises(ClinicalDataError, match="UTF-16 without a byte-order mark"):
        read_clinical_source(layout.clinical_csv)


def test_blank_lines_and_separator_only_lines_are_skipped(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    _clinical(
        layout, "\r\n".join([HEADER, ROWS[0], "", ROWS[1], *ROWS[2:], ";;;;;", "", ""]), "utf-8"
    )
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET)
    assert tables.clinical["dicom_patient_id"].to_list() == [P1, P2, P3, P4]


def test_a_bad_row_after_a_blank_line_is_named_by_its_real_line(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    bad = f"{P4};female;twelve;CML;;C3174"
    _clinical(layout, "\n".join([HEADER, ROWS[0], "", "", bad]) + "\n", "utf-8")
    with pytest.raises(ClinicalDataError, match=r"line 5, patient .*: age") as caught:
        read_clinical_source(layout.clinical_csv)
    assert "twelve" not in str(caught.value)


def test_a_patient_id_that_is_no_pseudonym_is_an_error_without_the_value(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    _clinical(layout, "\n".join([HEADER, "Erika Mustermann;female;7;ALL;;"]) + "\n", "utf-8")
    with pytest.raises(ClinicalDataError, match="line 2: patient_id is not a pseudonym") as caught:
        read_clinical_source(layout.clinical_csv)
    assert "Mustermann" not in str(caught.value)


def test_extra_clinical_columns_are_left_out_and_named_by_position(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    lines = [f"comment;{HEADER};info"] + [
        f"Anruf von {PLANTED[0]};{row};{PLANTED[1]}" for row in ROWS
    ]
    _clinical(layout, "\n".join(lines) + "\n", "utf-8")
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET)
    assert tables.clinical.columns == [
        "dicom_patient_id",
        "source_batch",
        "patient_id",
        "gender",
        "dicom_patient_sex",
        "age",
        "dicom_patient_age",
        "age_years",
        "leukemia_type",
        "leukemia_subtype",
        "ncit_concept_code",
        "ncit_concept_meaning",
    ]
    # column_numbers are the file's positions: the comment column shifts them by one
    meta = tables.column_metadata.filter(pl.col("column") == "gender").row(0, named=True)
    assert meta["column_numbers"] == [2]
    left = [w for w in tables.warnings if "is not one of clinical.csv's columns" in w]
    assert [w.split(": ", 1)[1].split(" is")[0] for w in left] == ["column 1", "column 8"]
    assert len(tables.columns_left_out) == 2
    assert not any(name in w for w in tables.warnings for name in PLANTED)
    assert not any("comment" in w or "info" in w for w in tables.columns_left_out)


# --------------------------------------------------------------------------- lab workbook


def _lab(path: Path, cells: dict[tuple[int, int], object], merged: tuple[int, ...] = ()) -> None:
    """A lab workbook from {(row, column): value} (0-based); str is a text cell, float a
    numeric one; ``merged`` = (row, first col, last col) of a merged header cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with xlsxwriter.Workbook(str(path)) as workbook:
        sheet = workbook.add_worksheet(LAB_SHEET)
        for (r, c), value in cells.items():
            if isinstance(value, str):
                sheet.write_string(r, c, value)
            else:
                sheet.write_number(r, c, float(value))  # type: ignore[arg-type]
        if merged:
            r, first, last = merged
            sheet.merge_range(r, first, r, last, str(cells[(r, first)]))
        labels = workbook.add_worksheet("idc_dictionary")
        labels.write_row(0, 0, ["column_formula", "column_label_formula"])
        for r, column in enumerate(LAB_COLUMNS, start=1):
            labels.write_row(r, 0, [column, reference_label(column)])


def test_merged_header_cell_leaves_its_column_out_named_by_position(tmp_path: Path) -> None:
    path = tmp_path / "lab.xlsx"
    cells: dict[tuple[int, int], object] = {(0, 0): "patient_id", (0, 1): "creatinine"}
    cells |= {(0, 3): "urate", (1, 0): P1, (1, 1): "0,5", (1, 2): PLANTED[0], (1, 3): "3,1"}
    _lab(path, cells, merged=(0, 1, 2))
    lab = read_lab_values(path)
    assert [c.name for c in lab.columns] == ["creatinine", "urate"]
    assert [c.position for c in lab.columns] == [1, 3]
    (left,) = lab.left_out_columns
    assert (left.position, left.cells) == (2, 1)
    assert any(
        "column C (column 3): no header (an empty or merged header" in w for w in lab.warnings
    )
    assert PLANTED[0] not in lab.table.write_csv()
    assert not any(PLANTED[0] in w for w in lab.warnings)


def test_rows_and_columns_are_excel_s_when_the_sheet_starts_lower_right(tmp_path: Path) -> None:
    path = tmp_path / "lab.xlsx"
    # Headers in row 3 from column B; a garbage cell at Excel row 5, column C.
    cells: dict[tuple[int, int], object] = {(2, 1): "patient_id", (2, 2): "creatinine"}
    cells |= {(3, 1): P1, (3, 2): "0,5", (4, 1): P2, (4, 2): "kaputt"}
    _lab(path, cells)
    lab = read_lab_values(path)
    assert lab.patient_position == 1 and lab.columns[0].position == 2
    assert lab.table["excel_row"].to_list() == [4, 5]
    (issue,) = [i for i in lab.issues if i.kind == "invalid"]
    assert (issue.row, issue.letter) == (5, "C")
    assert "sheet 'lab_values', row 5, column 'creatinine' (C)" in str(issue)


def test_decimal_separators_text_dot_groups_are_a_warning_numbers_are_not(tmp_path: Path) -> None:
    path = tmp_path / "lab.xlsx"
    values: list[object] = ["1.234", 1.234, "1.234,5", "1e3", "0.125", "12,5", 4.123, "1,234"]
    cells: dict[tuple[int, int], object] = {(0, 0): "patient_id", (0, 1): "creatinine"}
    ids = [f"{k:032X}" for k in range(1, len(values) + 1)]
    for r, (pid, value) in enumerate(zip(ids, values, strict=True), start=1):
        cells |= {(r, 0): pid, (r, 1): value}
    _lab(path, cells)
    lab = read_lab_values(path)
    got = dict(zip(lab.table["excel_row"], lab.table["creatinine_value"], strict=True))
    assert got[2] is None  # text "1.234": 1.234 or 1234, not guessed
    assert got[3] == pytest.approx(1.234)  # a numeric cell: no separator to guess
    assert got[4] == pytest.approx(1234.5)  # dot groups with a decimal comma
    assert got[5] == pytest.approx(1000.0)  # "1e3": read, but reported
    assert got[6] == pytest.approx(0.125)  # a leading zero is never a thousands group
    assert got[7] == pytest.approx(12.5)
    assert got[8] == pytest.approx(4.123)
    assert got[9] == pytest.approx(1.234)  # the comma is the decimal separator
    kinds = {(i.row, i.kind) for i in lab.issues}
    assert kinds == {(2, "ambiguous"), (5, "scientific")}
    (ambiguous,) = [w for w in lab.warnings if "row 2," in w]
    assert "sheet 'lab_values', row 2, column 'creatinine' (B)" in ambiguous
    assert "not guessed" in ambiguous
    assert lab.table.filter(pl.col("excel_row") == 2)["creatinine"].item() == "1.234"
    with pytest.raises(ClinicalDataError, match="row 2, column 'creatinine'"):
        read_lab_values(path, strict=True)


def test_known_not_determined_tokens_are_kept_as_text_without_a_value(tmp_path: Path) -> None:
    rows: list[tuple[str, dict[str, str | int | None]]] = [
        (P1, {"creatinine": "n.b."}),
        (P2, {"creatinine": "nicht bestimmt"}),
    ]
    layout = DataLayout.at(tmp_path)
    write_nasty_lab_xlsx(layout.lab_values_xlsx, rows=rows)
    lab = read_lab_values(layout.lab_values_xlsx)
    assert lab.table["creatinine"].to_list() == ["n.b.", "nicht bestimmt"]
    assert lab.table["creatinine_value"].to_list() == [None, None]
    assert any("2 cell(s) not determined" in w and "Excel rows 2-3" in w for w in lab.warnings)


def _bomb(path: Path, declared_mib: int) -> None:
    """A real workbook plus one member of ``declared_mib`` MiB of zeros: a few hundred KB."""
    write_nasty_lab_xlsx(path)
    chunk = b"\0" * 2**20
    with (
        zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z,
        z.open("xl/media/padding.bin", "w", force_zip64=True) as fh,
    ):
        for _ in range(declared_mib):
            fh.write(chunk)


def test_a_workbook_unpacking_past_the_limit_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lab_values.xlsx"
    _bomb(path, 1024)
    assert path.stat().st_size < 2 * 2**20  # 1 GiB declared in under 2 MB
    script = (
        "import resource, sys, time\n"
        "from pathlib import Path\n"
        "from bms_pipeline.core.clinical.lab_cells import read_lab_values\n"
        "from bms_pipeline.core.clinical.patients import ClinicalDataError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    read_lab_values(Path(sys.argv[1]))\n"
        "except ClinicalDataError as exc:\n"
        "    print(exc)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((peak - before) // 1024, round(time.perf_counter() - t, 3))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    message, measured = done.stdout.strip().splitlines()
    grown_mib, seconds = measured.split()
    assert str(path) in message and "unpacks to 1,024 MiB" in message
    assert "xl/media/padding.bin" in message and "zip bomb" in message
    assert int(grown_mib) < 50 and float(seconds) < 5
    # the same workbook under a larger limit is read (the check is the limit, nothing else)
    assert read_lab_values(path, max_unpacked=2 * 2**30).table.height == len(NASTY_ROWS)


def test_a_file_that_is_not_a_zip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "lab_values.xlsx"
    path.write_text("patient_id;creatinine\n", encoding="utf-8")
    with pytest.raises(ClinicalDataError, match=rf"{path}: not a readable XLSX workbook"):
        read_lab_values(path)


# --------------------------------------------------------------------------- privacy


def _planted(tmp_path: Path) -> DataLayout:
    """clinical.csv with `comment` and `info`, a lab sheet with `bemerkung` and `station`,
    and a name typed into a creatinine cell."""
    layout = DataLayout.at(tmp_path / "planted")
    lines = [f"{HEADER};comment;info"] + [
        f"{row};Rückruf {PLANTED[0]};{PLANTED[1]}" for row in ROWS
    ]
    _clinical(layout, "\n".join(lines) + "\n", "utf-8")
    headers = ["patient_id", *LAB_COLUMNS, "bemerkung", "station"]
    cells: dict[tuple[int, int], object] = {(0, c): h for c, h in enumerate(headers)}
    for r, pid in enumerate([P1, P2, P3, P4], start=1):
        cells[(r, 0)] = pid
        for c in range(1, len(LAB_COLUMNS) + 1):
            cells[(r, c)] = "1,0"
        cells[(r, len(headers) - 2)] = f"Mutter {PLANTED[0]} informiert"
        cells[(r, len(headers) - 1)] = PLANTED[2]
    cells[(3, 1 + LAB_COLUMNS.index("creatinine"))] = PLANTED[3]
    _lab(layout.lab_values_xlsx, cells)
    return layout


def _every_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_planted_names_reach_no_output_byte_nor_any_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = _planted(tmp_path)
    caplog.set_level(logging.DEBUG)
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET)
    written = write_outputs(tables, layout)
    raw = _every_byte(layout.out)
    con = duckdb.connect(str(written.duckdb), read_only=True)
    try:
        dumped = "\n".join(
            str(con.execute(f'SELECT * FROM "{name}"').fetchall())
            + str([d[0] for d in con.execute(f'SELECT * FROM "{name}"').description])
            for (name,) in con.execute(
                "SELECT table_name FROM duckdb_tables() UNION ALL "
                "SELECT view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        )
    finally:
        con.close()
    decoded = "\n".join(
        str(pl.read_parquet(p).to_dicts()) + ",".join(pl.read_parquet(p).columns)
        for p in written.parquet.values()
    )
    said = "\n".join([*tables.warnings, *tables.columns_left_out, caplog.text])
    for name in (*PLANTED, "Mustermann", "Gruber", "Kinderklinik"):
        assert name.encode() not in raw, name
        assert name not in dumped and name not in decoded and name not in said, name
    for header in ("bemerkung", "station", "comment", "info"):  # as a word (not source_info)
        word = re.compile(rf"(?<![A-Za-z0-9_]){header}(?![A-Za-z0-9_])")
        assert not word.search(dumped) and not word.search(decoded), header
    # the planted cell is reported by its place, and its column still published
    assert any("row 4, column 'creatinine' (E)" in w for w in tables.warnings)
    assert tables.laboratory.filter(pl.col("dicom_patient_id") == P3)["creatinine"].item() is None
    assert len(tables.columns_left_out) == 4  # comment, info, bemerkung, station


def test_a_defined_free_text_column_stops_the_tables_before_anything_is_written(
    tmp_path: Path,
) -> None:
    layout = _layout(tmp_path)
    path = layout.lab_values_xlsx
    cells: dict[tuple[int, int], object] = {(0, 0): "patient_id", (0, 1): "bemerkung"}
    cells |= {(1, 0): P1, (1, 1): "12,5", (2, 0): P2, (2, 1): "3,1"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with xlsxwriter.Workbook(str(path)) as workbook:  # a dictionary that defines bemerkung
        sheet = workbook.add_worksheet(LAB_SHEET)
        for (r, c), value in cells.items():
            sheet.write_string(r, c, str(value))
        labels = workbook.add_worksheet("idc_dictionary")
        labels.write_row(0, 0, ["column_formula", "column_label_formula"])
        labels.write_row(1, 0, ["bemerkung", "free text"])
    with pytest.raises(ClinicalDataError, match="bemerkung: its name suggests"):
        build_clinical_tables(layout, COLLECTION, target=TARGET)
    assert not layout.out.exists()


def test_left_out_patients_come_first_in_the_warnings(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET, converted_patients={P1, P2})
    first, second = tables.warnings[:2]
    assert "_clinical: 2 patient(s) without a converted slide left out" in first
    assert P3 in first and P4 in first
    assert "_laboratory: 2 patient(s)" in second


# --------------------------------------------------------------------------- DuckDB writer

_HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS theirs (x INTEGER)")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("INSERT INTO theirs VALUES (42)")
con.close()
print("closed", flush=True)
"""


def _hold(db: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_a_database_another_process_writes_is_refused_not_replaced(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET)
    write_outputs(tables, layout)
    inode = layout.duckdb_path.stat().st_ino
    holder = _hold(layout.duckdb_path, 4)
    try:
        t = time.monotonic()
        with pytest.raises(OutputWriteError) as caught:
            write_outputs(tables, layout, writer_timeout=1)
        assert 1 <= time.monotonic() - t < 3.5
        message = str(caught.value)
        assert str(layout.duckdb_path) in message and f"process {holder.pid}" in message
        assert layout.duckdb_path.stat().st_ino == inode  # not renamed away under it
    finally:
        assert holder.wait(timeout=30) == 0
    con = duckdb.connect(str(layout.duckdb_path), read_only=True)
    try:  # the other process's write landed in the file the pipeline still uses
        assert con.execute("SELECT x FROM theirs").fetchall() == [(42,)]
    finally:
        con.close()


def test_a_writer_that_closes_in_time_is_waited_for(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET)
    write_outputs(tables, layout)
    holder = _hold(layout.duckdb_path, 1.5)
    try:
        write_outputs(tables, layout, writer_timeout=60)
        assert holder.poll() == 0  # it had closed before the rebuild went on
    finally:
        holder.wait(timeout=30)
    con = duckdb.connect(str(layout.duckdb_path), read_only=True)
    try:
        assert con.execute("SELECT x FROM theirs").fetchall() == [(42,)]
        assert con.execute(f"SELECT count(*) FROM {tables.clinical_name}").fetchone() == (4,)
    finally:
        con.close()


def test_a_read_only_client_does_not_block_a_rebuild(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET)
    write_outputs(tables, layout)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, duckdb; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); time.sleep(10)",
            str(layout.duckdb_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
        t = time.monotonic()
        write_outputs(tables, layout, writer_timeout=5)
        assert time.monotonic() - t < 4
    finally:
        reader.kill()
        reader.wait()


def test_the_free_text_rule_flags_all_five_planted_columns_by_name() -> None:
    frame = pl.DataFrame(
        {c: ["x"] for c in ("comment", "info", "bemerkung", "station", "creatinine")}
    )
    assert free_text_phi_columns(frame) == ["comment", "info", "bemerkung", "station"]
