"""The published collection follows its inputs: a moved box, a changed sex, a deleted slide and
a skipped one, each seen by `status` and `run`; exactly the affected outputs change, under new
UIDs; a further run changes no byte."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pydicom
import pytest

from bms_pipeline import cli
from bms_pipeline.core.synthetic.demo import write_demo_dataset


def _snapshot(out: Path) -> dict[str, tuple[str, int]]:
    """Every published file (not staging or locks): its hash and mtime."""
    return {
        str(p.relative_to(out)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }


def _uids(folder: Path) -> dict[str, tuple[str, str]]:
    return {
        p.name: (str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        for p in sorted(folder.glob("*.dcm"))
        if (ds := pydicom.dcmread(p, stop_before_pixels=True))
    }


def _run(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli.main(["run", "--data-root", str(root), *extra])
    return code, capsys.readouterr().out


def _status(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["status", "--data-root", str(root)]) == 0
    return capsys.readouterr().out


def test_edits_rerun_exactly_what_they_shape_and_removals_are_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("DAGSTER_HOME", "BMS_DATA_ROOT", "BMS_OUTPUT_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    dataset = write_demo_dataset(tmp_path / "data", slides=3, seed=5)
    layout = dataset.layout
    out = layout.out
    # Two slides of one patient (one to delete, one whose box moves), one of another.
    two = sorted(s for s in dataset.slides if f"{s[:32]}_2_bm" in dataset.slides)
    moved, deleted = two[0], two[1]
    (other,) = sorted(set(dataset.slides) - set(two))
    patient = other[:32]
    assert _run(layout.root, capsys)[0] == 0
    before = _snapshot(out)
    uids_before = {s: _uids(layout.ann_dir(s)) | _uids(layout.sm_dir(s)) for s in (moved, other)}

    # One cell box of `moved` shifted by 4 px; `patient`'s sex changed; `deleted` removed.
    cells = layout.annotations_dir / "cells.csv"
    lines = cells.read_text(encoding="utf-8").splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if f",{moved}," in line)
    fields = lines[row].split(",")
    fields[3], fields[5] = str(int(fields[3]) + 4), str(int(fields[5]) + 4)
    lines[row] = ",".join(fields)
    cells.write_text("".join(lines), encoding="utf-8")
    clinical = layout.clinical_csv
    text = clinical.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    at = next(i for i, line in enumerate(text) if line.startswith(patient))
    parts = text[at].split(";")
    new_sex = "male" if parts[1] != "male" else "female"
    parts[1] = new_sex
    text[at] = ";".join(parts)
    clinical.write_text("".join(text), encoding="utf-8")
    shutil.rmtree(layout.mrxs(deleted).with_suffix(""))
    layout.mrxs(deleted).unlink()

    status = _status(layout.root, capsys)
    assert f"{moved}" in status and "ann_series: cells.csv changed" in status, status
    assert "sm_series: clinical.csv (patient row) changed" in status, status
    assert f"{deleted}" in status and "withdraw" in status, status
    assert "clinical_tables" in status and "clinical.csv changed" in status, status

    code, console = _run(layout.root, capsys)
    assert code == 0, console
    assert f"{deleted}: withdrawn" in console
    after = _snapshot(out)
    changed = {k for k in after if before.get(k) != after[k]}
    gone = set(before) - set(after)
    # The deleted slide is gone from out/dicom and the validation results.
    assert {k for k in gone if deleted in k} == {k for k in before if deleted in k}
    assert not any(deleted in k for k in after)
    # `moved`: its SM untouched; only the ANN series holding the box are new, with new UIDs.
    assert not any(f"dicom/{moved}/sm/" in k for k in changed | gone)
    uids_after = _uids(layout.ann_dir(moved))
    new_ann = {k.split("/")[-1] for k in changed if f"dicom/{moved}/ann/" in k}
    # What did not change is untouched: the same bytes and mtime (linked, not rewritten).
    assert new_ann and "consensus.dcm" in new_ann
    for name, (series, sop) in uids_after.items():
        old_series, old_sop = uids_before[moved][name]
        if name in new_ann:
            assert series != old_series and sop != old_sop, name
        else:
            assert (series, sop) == (old_series, old_sop), name
    # `other`: the patient's SM carries the new sex, under new UIDs.
    sex = {"male": "M", "female": "F"}[new_sex]
    for path in layout.sm_dir(other).glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientSex == sex
        assert str(ds.SOPInstanceUID) not in {u for _, u in uids_before[other].values()}
    # The tables: new sex, no trace of the deleted slide.
    table = pl.read_parquet(layout.tables_dir / "bonemarrowwsi_pediatricleukemia_clinical.parquet")
    assert table.filter(pl.col("dicom_patient_id") == patient)["gender"].to_list() == [new_sex]
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        containers = {
            r[0] for r in con.execute("select ContainerIdentifier from sm_index").fetchall()
        }
        paths = con.execute(
            "select count(*) from bms_instance_paths where slide_id = ?", [deleted]
        ).fetchone()
        releases = con.execute(
            "select release, revised, removed from bms_releases order by release"
        ).fetchall()
        prior = con.execute("select count(*) from bms_prior_versions_index").fetchone()
        sexes = dict(con.execute("select PatientID, PatientSex from index").fetchall())
    assert containers == {moved, other}
    assert paths is not None and paths[0] == 0
    assert sexes[patient] == sex
    assert len(releases) == 2 and releases[1][1] > 0 and releases[1][2] > 0
    assert prior is not None and prior[0] > 0

    # A further run runs nothing and changes no byte.
    settled = _snapshot(out)
    code, console = _run(layout.root, capsys)
    assert code == 0 and "0 slide(s) to run" in console, console
    assert _snapshot(out) == settled
    assert "stale" not in _status(layout.root, capsys)


def test_a_skipped_slide_is_withdrawn_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("DAGSTER_HOME", "BMS_DATA_ROOT", "BMS_OUTPUT_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    dataset = write_demo_dataset(tmp_path / "data", slides=2, seed=9)
    layout = dataset.layout
    assert _run(layout.root, capsys)[0] == 0
    skipped = sorted(dataset.slides)[0]
    with layout.collection_yaml.open("a", encoding="utf-8") as handle:
        handle.write(f"skip_slides:\n  {skipped}: duplicate scan of the same smear\n")
    status = _status(layout.root, capsys)
    assert f"{skipped}" in status and "skipped" in status and "duplicate scan" in status
    code, console = _run(layout.root, capsys)
    assert code == 0, console
    assert f"{skipped}: withdrawn: skipped in collection.yaml: duplicate scan" in console
    assert not layout.slide_dicom_dir(skipped).exists()
    assert not layout.validation_parquet(skipped).exists()
    code, console = _run(layout.root, capsys)
    assert code == 0 and "withdrawn" not in console
