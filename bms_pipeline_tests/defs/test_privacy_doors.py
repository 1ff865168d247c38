"""Privacy through every door, on real `bms-pipeline run` processes: names planted in the six
[GENERAL] properties real 3DHISTECH slides carry and a DICOMweb URL with user:password (to a
server that accepts connections and never answers) appear in no byte under the output root,
under .dagster (SQLite cells inflated too) nor on the console, on the first and the second run;
and the audit that ends each run finds values planted by hand into an output file, a Parquet
table, the SQLite instance and a log, naming the place, never the value."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.privacy.audit import AuditReport, audit_layout
from bms_pipeline_tests.cli_runs import Finished, cli, demo_root
from bms_pipeline_tests.privacy import PLANTED, places_holding, plant_properties

PASSWORD = "S3cretPassw0rd-for-tests"
USER = "alice-the-uploader"


@dataclass(frozen=True)
class TwoRuns:
    root: Path
    url: str
    first: Finished
    second: Finished


def _silent_server() -> tuple[socket.socket, threading.Event]:
    """Accepts every connection and never answers (issue 25's fault, real)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return server, stop


def _run(root: Path, url: str) -> Finished:
    import time

    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["BMS_DICOMWEB_TIMEOUT"] = "1"
    started = time.monotonic()
    done = subprocess.run(
        cli("run", "--data-root", str(root), "--jobs", "1", "--dicomweb-url", url),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRuns]:
    root = demo_root(tmp_path_factory.mktemp("privacy") / "data", slides=2)
    plant_properties(root)
    server, stop = _silent_server()
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{server.getsockname()[1]}/dicom-web"
    try:
        first = _run(root, url)
        second = _run(root, url)
    finally:
        stop.set()
        server.close()
    yield TwoRuns(root, url, first, second)


SECRETS = [*PLANTED.values(), PASSWORD, f"{USER}:{PASSWORD}", USER]


def test_planted_names_and_credentials_reach_no_byte_and_no_console_line(
    two_runs: TwoRuns,
) -> None:
    root = two_runs.root
    for run in (two_runs.first, two_runs.second):
        console = run.stdout + run.stderr
        for value in SECRETS:
            assert value not in console, f"on the console: {value[:4]}..."
        assert "privacy audit: no identifying value found" in run.stdout, run.stdout[-2000:]
    for value in SECRETS:
        assert places_holding([root / "out", root / ".dagster"], value) == [], value[:4]
    # the slides were converted and published to out/ (the names had a chance to leak)
    assert len(list((root / "out" / "dicom").glob("*/sm/*.dcm"))) >= 2


def test_a_silent_dicomweb_server_fails_the_first_slide_in_bounded_time_and_the_next_fast(
    two_runs: TwoRuns,
) -> None:
    out = two_runs.first.stdout
    assert two_runs.first.returncode == 1, out[-2000:]
    assert "did not answer" in out and "given up earlier in this process" in out, out[-3000:]
    # The whole run (two conversions, the collection, two failed publications) stays far
    # below one slide's old cost of 3 x 120 s.
    assert two_runs.first.seconds < 180, two_runs.first.seconds
    assert "publishing to http://127.0.0.1:" in out  # the URL is shown without its userinfo


def _copy(two_runs: TwoRuns, tmp_path: Path) -> DataLayout:
    root = tmp_path / "data"
    shutil.copytree(two_runs.root, root, symlinks=True)
    return DataLayout.at(root, root / "out")


def _audit(layout: DataLayout, urls: dict[str, str] | None = None) -> AuditReport:
    return audit_layout(layout, layout.root / ".dagster", urls, env={})


def _names(report: AuditReport) -> list[str]:
    return [h.describe() for h in report.hits]


def test_the_audit_finds_nothing_in_correct_outputs_and_excuses_the_slide_id(
    two_runs: TwoRuns, tmp_path: Path
) -> None:
    report = _audit(_copy(two_runs, tmp_path), {"--dicomweb-url": two_runs.url})
    assert report.clean, _names(report)
    # six planted names per slide (one needle per value), OBJECTIVE_NAME, SLIDE_ID, dates,
    # the password and user:password
    assert report.needles >= len(PLANTED) + 4
    # the first demo slide's SLIDE_NAME is its slide id: carried, not a leak (were it
    # searched for, every table and event naming the slide would be a hit above)
    assert report.excused >= 1
    assert report.files > 50 and report.cells > 1000


def test_the_audit_finds_a_name_planted_in_an_output_file_at_its_offset(
    two_runs: TwoRuns, tmp_path: Path
) -> None:
    layout = _copy(two_runs, tmp_path)
    target = layout.out / "bigquery" / "index.schema.json"
    before = target.read_bytes()
    target.write_bytes(before + PLANTED["PROJECT_NAME"].encode())
    report = _audit(layout)
    assert len(report.hits) == 1, _names(report)
    (hit,) = report.hits
    assert hit.place == f"out/bigquery/index.schema.json, byte {len(before)}"
    assert "mirax.GENERAL.PROJECT_NAME of slide" in hit.needle
    assert PLANTED["PROJECT_NAME"] not in hit.describe()


def test_the_audit_reads_compressed_parquet_cells(two_runs: TwoRuns, tmp_path: Path) -> None:
    layout = _copy(two_runs, tmp_path)
    path = layout.out / "tables" / "notes.parquet"
    name = PLANTED["SLIDE_LABEL"]
    # After a near copy, zstd stores the name as a back reference plus one letter; without
    # min/max statistics (which a footer holds in clear) no byte of the file spells it.
    notes = ["fine", name[:-1] + "x", name]
    pl.DataFrame({"n": [1, 2, 3], "note": notes}).write_parquet(
        path, compression="zstd", statistics=False
    )
    assert name.encode() not in path.read_bytes()
    report = _audit(layout)
    assert [h.place for h in report.hits] == [
        "out/tables/notes.parquet, table parquet, row 3, column note"
    ]


def test_the_audit_finds_values_planted_in_the_sqlite_instance(
    two_runs: TwoRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    layout = _copy(two_runs, tmp_path)
    home = layout.root / ".dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:  # a run tag, by Dagster's own API
        run_id = instance.get_runs(limit=1)[0].run_id
        instance.add_run_tags(run_id, {"note": PLANTED["SLIDE_COMMENT"]})
    with sqlite3.connect(home / "history" / "runs" / "index.db") as db:  # compressed, as snapshots
        db.execute("CREATE TABLE planted (body BLOB)")
        db.execute("INSERT INTO planted VALUES (?)", (zlib.compress(PLANTED["COMMENT"].encode()),))
    report = _audit(layout)
    places = {h.needle.split(" of slide")[0]: h.place for h in report.hits}
    assert "history/runs.db, table run_tags" in places["mirax.GENERAL.SLIDE_COMMENT"], places
    assert places["mirax.GENERAL.COMMENT"].startswith(
        ".dagster/history/runs/index.db, table planted, row 1, column body (inflated)"
    ), places
    assert all(v not in str(places) for v in PLANTED.values())


def test_the_audit_finds_a_name_and_a_password_planted_in_a_log(
    two_runs: TwoRuns, tmp_path: Path
) -> None:
    layout = _copy(two_runs, tmp_path)
    log = min((layout.root / ".dagster" / "storage").rglob("compute_logs/*.err"))
    before = log.read_bytes()
    log.write_bytes(before + f"\n{PLANTED['SLIDE_QUALITY']}\n{PASSWORD}\n".encode())
    report = _audit(layout, {"--dicomweb-url": two_runs.url})
    shown = log.relative_to(layout.root).as_posix()
    hits = {h.needle.split(" of slide")[0]: h.place for h in report.hits}
    assert hits["mirax.GENERAL.SLIDE_QUALITY"] == f"{shown}, byte {len(before) + 1}", hits
    offset = len(before) + len(PLANTED["SLIDE_QUALITY"]) + 2
    assert hits["the password of --dicomweb-url"] == f"{shown}, byte {offset}", hits


def test_the_audit_searches_free_text_clinical_cells_and_the_cli_names_places_only(
    two_runs: TwoRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bms_pipeline.cli import main
    from bms_pipeline.cli.audit import EXIT_LEAK

    layout = _copy(two_runs, tmp_path)
    name = "Kunigunde Holzapfel"
    lines = layout.clinical_csv.read_text(encoding="utf-8-sig").splitlines()
    lines = [lines[0] + ";notes", *(f"{line};{name}" for line in lines[1:])]
    layout.clinical_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _audit(layout).clean  # the outputs never saw the column
    (layout.out / "qc.txt").write_text(f"reviewed by {name}\n", encoding="utf-8")
    saved = dict(os.environ)  # the CLI exports its settings for worker processes
    try:
        assert main(["audit", "--data-root", str(layout.root)]) == EXIT_LEAK
    finally:
        os.environ.clear()
        os.environ.update(saved)
    captured = capsys.readouterr()
    assert "out/qc.txt, byte 12: holds clinical.csv column 7, line 2" in captured.err
    assert name not in captured.out + captured.err


def test_the_incremental_audit_reads_only_what_changed_and_keeps_no_value(
    two_runs: TwoRuns, tmp_path: Path
) -> None:
    layout = _copy(two_runs, tmp_path)
    home = layout.root / ".dagster"
    first = audit_layout(layout, home, env={}, full=True)
    again = audit_layout(layout, home, env={}, full=False)
    assert first.clean and again.clean
    assert first.unchanged == 0 and first.bytes > 1_000_000
    assert again.unchanged == again.files == first.files and again.bytes == 0
    log = min((home / "storage").rglob("compute_logs/*.out"))
    log.write_bytes(log.read_bytes() + PLANTED["COMMENT"].encode())
    third = audit_layout(layout, home, env={}, full=False)
    assert [h.place.split(",")[0] for h in third.hits] == [log.relative_to(layout.root).as_posix()]
    assert third.unchanged == third.files - 1  # only the changed log was read
    # the cache names files and holds a salted digest, never a value
    for value in PLANTED.values():
        assert value not in (home / "privacy-audit.json").read_text()
    # other values to search for (a new free-text clinical cell) make every file new again
    lines = layout.clinical_csv.read_text(encoding="utf-8-sig").splitlines()
    lines = [lines[0] + ";notes", *(f"{line};Theodolinde Sauerampfer" for line in lines[1:])]
    layout.clinical_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fourth = audit_layout(layout, home, env={}, full=False)
    assert fourth.unchanged == 0 and len(fourth.hits) == 1
