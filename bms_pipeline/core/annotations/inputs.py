"""Read one slide's rows of rois.csv, cells.csv and detections.csv into checked numpy arrays.

The three files cover the whole collection; a slide's rows are selected by ``slide_id``.
Everything is read as text first, so a malformed value is reported as written instead of
being coerced. Every problem becomes an `AnnotationInputError` that names the file, the
1-based physical CSV line (the header is line 1) and the reason: a box is never dropped,
because an ANN object with a missing box looks exactly like a complete one.

Coordinates in the files are MRXS level-0 pixels of the whole canvas; wsidicomizer crops the
image to OpenSlide's bounds, so every box is shifted by ``(-bounds_x, -bounds_y)`` here and
must then lie inside the converted base level (``0..width`` x ``0..height``).

The expert consensus is recomputed from ``all_original_annotations`` with the documented
rule (`consensus_label`); disagreements with ``original_consensus_label`` are returned as
data (`SlideAnnotations.disagreements`), not raised, because they are a finding about the
source, not a reason to stop.

Labels are stored as int16 indices into the `LabelTable` (-1: no label), and boxes as
``(n, 4)`` float64 ``x1, y1, x2, y2`` arrays, so a slide with a million detections needs no
per-box Python object.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from bms_pipeline.core.annotations.consensus import apply_rename, consensus_label
from bms_pipeline.core.annotations.labels import (
    NO_CONSENSUS,
    UNLABELED_LABEL,
    LabelTable,
    cell_labels,
)

__all__ = [
    "CELL_COLUMNS",
    "DETECTION_COLUMNS",
    "ROI_COLUMNS",
    "AnnotationInputError",
    "CellBoxes",
    "DetectionBoxes",
    "InputProblem",
    "RoiBoxes",
    "SlideAnnotations",
    "read_cells",
    "read_detections",
    "read_rois",
    "read_slide_annotations",
]

ROI_COLUMNS = ("roi_id", "slide_id", "x1", "y1", "x2", "y2")
CELL_COLUMNS = (
    "cell_id",
    "slide_id",
    "roi_id",
    "x1",
    "y1",
    "x2",
    "y2",
    "original_consensus_label",
    "all_original_annotations",
)
DETECTION_COLUMNS = ("slide_id", "x1", "y1", "x2", "y2", "score")
OUTSIDE_ROI = -1
"""roi_id of a cell outside every ROI."""

_BOX = ("x1", "y1", "x2", "y2")
_RECORD = "__record"  # 0-based data record index, as polars and the csv module count them
_MAX_LISTED = 20  # problems spelled out in an error message; the rest are counted


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class InputProblem:
    """One thing wrong with an input file; ``line`` is 1-based (1 = header), None = file."""

    path: Path
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.reason}"


class AnnotationInputError(ValueError):
    """An annotation file is missing, malformed or inconsistent with the slide.

    ``problems`` lists the first problems found (file, line, reason); ``total`` counts all.
    """

    def __init__(self, problems: Sequence[InputProblem], total: int | None = None) -> None:
        if not problems:
            raise ValueError("AnnotationInputError needs at least one problem")
        self.problems = tuple(sorted(problems, key=lambda p: (str(p.path), p.line or 0)))
        self.total = max(total or 0, len(self.problems))
        lines = [str(p) for p in self.problems]
        if self.total > len(self.problems):
            lines.append(f"... and {self.total - len(self.problems)} more problems")
        super().__init__("\n".join(lines))

    @property
    def path(self) -> Path:
        return self.problems[0].path

    @property
    def line(self) -> int | None:
        return self.problems[0].line

    @property
    def reason(self) -> str:
        return self.problems[0].reason


class _Problems:
    """Collects per-record problems of one file; line numbers are resolved only on failure."""

    def __init__(self, path: Path, records: np.ndarray) -> None:
        self.path = path
        self.records = records
        self.found: list[tuple[int, str]] = []
        self.total = 0

    def flag(self, mask: np.ndarray, reason: Callable[[int], str]) -> None:
        """Record a problem for every row where `mask` is true (reason built from the row)."""
        rows = np.flatnonzero(mask)
        self.total += len(rows)
        room = max(_MAX_LISTED - len(self.found), 0)
        self.found.extend((int(self.records[i]), reason(int(i))) for i in rows[:room])

    def raise_if_any(self) -> None:
        if not self.total:
            return
        lines = _physical_lines(self.path, sorted({r for r, _ in self.found}))
        problems = [InputProblem(self.path, lines[r], why) for r, why in self.found]
        raise AnnotationInputError(problems, self.total)


def _physical_lines(path: Path, records: Sequence[int]) -> dict[int, int]:
    """1-based line on which each 0-based data record starts.

    Usually ``record + 2``, but a quoted field may span lines, so the file is walked with
    the csv module (only on the error path, where exactness matters more than speed).
    """
    wanted = set(records)
    out: dict[int, int] = {}
    if not wanted:
        return out
    last = max(wanted)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        start = reader.line_num + 1
        for record, _row in enumerate(reader):
            if record in wanted:
                out[record] = start
            if record >= last:
                break
            start = reader.line_num + 1
    for record in wanted - out.keys():
        out[record] = record + 2
    return out


def _ragged_lines(path: Path, n_columns: int) -> tuple[list[int], int]:
    """Lines of the records with more fields than the header (polars only says 'some'):
    the first `_MAX_LISTED`, and how many there are in all."""
    lines: list[int] = []
    total = 0
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        start = reader.line_num + 1
        for row in reader:
            if len(row) > n_columns:
                total += 1
                if len(lines) < _MAX_LISTED:
                    lines.append(start)
            start = reader.line_num + 1
    return lines, total


# --------------------------------------------------------------------------- typed rows

DISAGREEMENT_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "line": pl.Int64,
    "cell_id": pl.Int64,
    "given": pl.String,
    "given_renamed": pl.String,
    "computed": pl.String,
}


@dataclass(frozen=True)
class _Rows:
    """What every file shares: where each row came from and its shifted box."""

    path: Path
    records: np.ndarray  # (n,) int64, 0-based data record of each row
    boxes: np.ndarray  # (n, 4) float64 x1, y1, x2, y2 in converted-image pixels

    def __len__(self) -> int:
        return len(self.records)

    def lines(self) -> np.ndarray:
        """1-based physical CSV lines of the rows (walks the file; for reports, not loops)."""
        mapping = _physical_lines(self.path, self.records.tolist())
        return np.array([mapping[int(r)] for r in self.records], dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class RoiBoxes(_Rows):
    """rois.csv rows of one slide."""

    roi_id: np.ndarray  # (n,) int64


@dataclass(frozen=True, kw_only=True)
class CellBoxes(_Rows):
    """cells.csv rows of one slide, with labels as indices into the label table."""

    cell_id: np.ndarray  # (n,) int64
    roi_id: np.ndarray  # (n,) int64, -1 outside every ROI
    sessions: np.ndarray
    """(n, k) int16 label index per expert session, -1 where the cell has no label in it."""
    consensus: np.ndarray
    """(n,) int16 label index of the consensus recomputed with `consensus_label`."""
    given_consensus: np.ndarray
    """(n,) int16 label index of ``original_consensus_label`` after renames."""
    disagreements: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=DISAGREEMENT_SCHEMA)
    )
    """One row per cell whose recomputed consensus differs from ``original_consensus_label``
    (after renames): ``line``, ``cell_id``, ``given`` (as written), ``given_renamed`` and
    ``computed``."""

    @property
    def inside_roi(self) -> np.ndarray:
        return self.roi_id != OUTSIDE_ROI

    @property
    def session_count(self) -> int:
        return int(self.sessions.shape[1])

    @property
    def labelled(self) -> np.ndarray:
        """(n,) bool: the cell has at least one expert label."""
        if not self.sessions.shape[1]:
            return np.zeros(len(self.cell_id), dtype=bool)
        return (self.sessions >= 0).any(axis=1)

    def consensus_of(self, source: str) -> np.ndarray:
        """(n,) label index of the consensus: the source's (`source`) or the rule's
        (`recomputed`); -1 for unlabeled cells."""
        if source not in ("source", "recomputed"):
            raise ValueError(f"consensus source {source!r} is neither 'source' nor 'recomputed'")
        return self.given_consensus if source == "source" else self.consensus

    def unlabeled_index(self, labels: LabelTable) -> np.ndarray:
        """(n,) label index `haematological_structure` for unlabeled cells, else -1."""
        return np.where(self.labelled, -1, labels.index[UNLABELED_LABEL]).astype(np.int16)


@dataclass(frozen=True, kw_only=True)
class DetectionBoxes(_Rows):
    """detections.csv rows of one slide."""

    score: np.ndarray  # (n,) float64 in 0..1


@dataclass(frozen=True)
class SlideAnnotations:
    """Everything the ANN series of one slide are built from."""

    slide_id: str
    bounds: tuple[int, int]
    image_size: tuple[int, int]
    labels: LabelTable
    rois: RoiBoxes
    cells: CellBoxes
    detections: DetectionBoxes

    @property
    def disagreements(self) -> pl.DataFrame:
        """Cells whose recomputed consensus differs from the file's (see `CellBoxes`)."""
        return self.cells.disagreements


# --------------------------------------------------------------------------- reading


def _read_slide_rows(path: Path, columns: Sequence[str], slide_id: str) -> pl.DataFrame:
    """The file's rows of `slide_id`, every column a stripped string, plus `_RECORD`."""
    if not path.is_file():
        raise AnnotationInputError([InputProblem(path, None, "file does not exist")])
    try:
        header = [c.strip() for c in pl.read_csv(path, n_rows=0, infer_schema=False).columns]
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise AnnotationInputError(
            [InputProblem(path, 1, f"cannot read the header: {exc}")]
        ) from exc
    missing = [c for c in columns if c not in header]
    if missing:
        raise AnnotationInputError(
            [InputProblem(path, 1, f"missing column(s) {missing}; the header is {header}")]
        )
    try:
        return (
            pl.scan_csv(
                path,
                infer_schema=False,
                row_index_name=_RECORD,
                with_column_names=lambda names: [n.strip() for n in names],
            )
            .select(pl.col(_RECORD).cast(pl.Int64), *(pl.col(c).str.strip_chars() for c in columns))
            .filter(pl.col("slide_id") == slide_id)
            .collect()
        )
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        ragged, total = _ragged_lines(path, len(header))
        if not ragged:
            raise AnnotationInputError(
                [InputProblem(path, None, f"cannot be parsed as CSV: {exc}")]
            ) from exc
        reason = f"more fields than the {len(header)} header columns"
        raise AnnotationInputError(
            [InputProblem(path, line, reason) for line in ragged], total
        ) from exc


def _numbers(
    df: pl.DataFrame, names: Sequence[str], dtype: type[pl.DataType], problems: _Problems
) -> tuple[np.ndarray, np.ndarray]:
    """Columns parsed as `dtype` into an (n, len(names)) array, and a mask of rows whose
    every value parsed (and is finite); each bad value becomes a problem naming it."""
    is_float = dtype == pl.Float64
    kind = "a number" if is_float else "an integer"
    arrays: list[np.ndarray] = []
    ok = np.ones(len(df), dtype=bool)
    for name in names:
        text = df[name]  # strings stay in polars; only reported values become Python str
        parsed = text.cast(dtype, strict=False)
        empty = (text.is_null() | (text == "")).to_numpy()
        bad = parsed.is_null().to_numpy() & ~empty
        problems.flag(empty, lambda i, n=name: f"{n} is empty")
        problems.flag(bad, lambda i, n=name, t=text: f"{n} is not {kind}: {t[i]!r}")
        if is_float:
            values = parsed.fill_null(0.0).to_numpy().astype(np.float64)
            infinite = ~np.isfinite(values)
            problems.flag(infinite, lambda i, n=name, t=text: f"{n} is not finite: {t[i]!r}")
            values[infinite] = 0.0
            ok &= ~(empty | bad | infinite)
        else:
            values = parsed.fill_null(0).to_numpy().astype(np.int64)
            ok &= ~(empty | bad)
        arrays.append(values)
    out_dtype = np.float64 if is_float else np.int64
    stacked = np.stack(arrays, axis=1) if len(df) else np.zeros((0, len(names)), out_dtype)
    return stacked.astype(out_dtype, copy=False), ok


def _boxes(
    df: pl.DataFrame,
    problems: _Problems,
    bounds: tuple[int, int],
    image_size: tuple[int, int],
) -> np.ndarray:
    """Parse, check and shift the boxes: x2 > x1, y2 > y1, inside the converted image."""
    raw, ok = _numbers(df, _BOX, pl.Float64, problems)
    x1, y1, x2, y2 = raw.T
    problems.flag(ok & (x2 <= x1), lambda i: f"x2 ({x2[i]:g}) is not greater than x1 ({x1[i]:g})")
    problems.flag(ok & (y2 <= y1), lambda i: f"y2 ({y2[i]:g}) is not greater than y1 ({y1[i]:g})")
    bx, by = bounds
    width, height = image_size
    shifted = raw - np.array([bx, by, bx, by], dtype=np.float64)
    sx1, sy1, sx2, sy2 = shifted.T
    outside = ok & ((sx1 < 0) | (sy1 < 0) | (sx2 > width) | (sy2 > height))
    problems.flag(
        outside,
        lambda i: (
            f"box ({x1[i]:g}, {y1[i]:g}, {x2[i]:g}, {y2[i]:g}) lies outside the converted image: "
            f"shifted by the bounds (-{bx}, -{by}) it is ({sx1[i]:g}, {sy1[i]:g}, {sx2[i]:g}, "
            f"{sy2[i]:g}), the image is 0..{width} x 0..{height}"
        ),
    )
    return shifted


def _duplicates(values: np.ndarray) -> np.ndarray:
    """Mask of every occurrence after the first of a repeated value."""
    _, first = np.unique(values, return_index=True)
    mask = np.ones(len(values), dtype=bool)
    mask[first] = False
    return mask


def read_rois(
    path: Path, slide_id: str, bounds: tuple[int, int], image_size: tuple[int, int]
) -> RoiBoxes:
    """rois.csv rows of `slide_id`: checked, shifted by `bounds`."""
    df = _read_slide_rows(path, ROI_COLUMNS, slide_id)
    records = df[_RECORD].to_numpy().astype(np.int64)
    problems = _Problems(path, records)
    roi_id = _numbers(df, ("roi_id",), pl.Int64, problems)[0][:, 0]
    boxes = _boxes(df, problems, bounds, image_size)
    problems.flag(_duplicates(roi_id), lambda i: f"roi_id {roi_id[i]} appears twice for {slide_id}")
    problems.flag(roi_id == OUTSIDE_ROI, lambda i: f"roi_id {OUTSIDE_ROI} is reserved for 'no ROI'")
    problems.raise_if_any()
    return RoiBoxes(path=path, records=records, boxes=boxes, roi_id=roi_id)


def _label_indices(raw: pl.Series, labels: LabelTable) -> tuple[np.ndarray, dict[str, str]]:
    """Label index per value (-1 for null or blank), and each unknown value -> its rename.

    Renames are applied once per distinct value, not once per row.
    """
    index = labels.index
    mapping: dict[str, int] = {}
    unknown: dict[str, str] = {}
    for value in raw.drop_nulls().unique().to_list():
        renamed = apply_rename(value)
        if not renamed:
            continue
        if renamed in index:
            mapping[value] = index[renamed]
        else:
            unknown[value] = renamed
    indices = raw.replace_strict(mapping, default=-1, return_dtype=pl.Int16).fill_null(-1)
    return indices.to_numpy().astype(np.int16), unknown


def _unknown_reason(value: str, renamed: str, column: str, labels: LabelTable) -> str:
    shown = repr(value) if renamed == value else f"{value!r} (renamed to {renamed!r})"
    return f"unknown cell label {shown} in {column}: not in {labels.source.name}"


def _session_labels(annotations: pl.Series, labels: LabelTable, problems: _Problems) -> np.ndarray:
    """(n, k) label index per cell and session from ``all_original_annotations``."""
    n = len(annotations)
    flat = (
        pl.DataFrame({"row": np.arange(n, dtype=np.int64), "text": annotations})
        .select(
            "row",
            pl.col("text").str.split(",").list.eval(pl.element().str.strip_chars()).alias("label"),
        )
        .with_columns(pos=pl.int_ranges(0, pl.col("label").list.len(), dtype=pl.Int64))
        .explode("label", "pos")
        .drop_nulls("pos")
    )
    index, unknown = _label_indices(flat["label"], labels)
    rows = flat["row"].to_numpy()
    pos = flat["pos"].to_numpy()
    sessions = np.full((n, int(pos.max()) + 1 if len(pos) else 0), -1, dtype=np.int16)
    sessions[rows, pos] = index
    has_unknown = np.zeros(n, dtype=bool)
    if unknown:
        bad = flat.filter(pl.col("label").is_in(list(unknown))).unique("row", keep="first")
        first = {r: (v, k) for r, v, k in bad.select("row", "label", "pos").iter_rows()}
        has_unknown[list(first)] = True
        problems.flag(
            has_unknown,
            lambda i: _unknown_reason(
                first[i][0],
                unknown[first[i][0]],
                f"all_original_annotations (session {first[i][1]})",
                labels,
            ),
        )
    return sessions


def read_cells(
    path: Path,
    slide_id: str,
    bounds: tuple[int, int],
    image_size: tuple[int, int],
    roi_ids: np.ndarray,
    labels: LabelTable | None = None,
) -> CellBoxes:
    """cells.csv rows of `slide_id`: checked, shifted, labels resolved through renames.

    `roi_ids` are the slide's ids from rois.csv; a cell's roi_id must be one of them or -1.
    A blank entry in ``all_original_annotations`` (``a,,b``) means no label in that
    session, as `consensus_label` ignores it too. A cell without any expert label (a slide
    no expert annotated) is an unlabeled cell: its original_consensus_label must be empty
    or `haematological_structure`, and it has no consensus (-1).
    """
    labels = labels if labels is not None else cell_labels()
    if NO_CONSENSUS not in labels:
        raise AnnotationInputError(
            [InputProblem(labels.source, None, f"the label {NO_CONSENSUS!r} is not defined")]
        )
    df = _read_slide_rows(path, CELL_COLUMNS, slide_id)
    records = df[_RECORD].to_numpy().astype(np.int64)
    problems = _Problems(path, records)
    ids = _numbers(df, ("cell_id", "roi_id"), pl.Int64, problems)[0]
    cell_id, roi_id = ids[:, 0], ids[:, 1]
    boxes = _boxes(df, problems, bounds, image_size)
    problems.flag(_duplicates(cell_id), lambda i: f"cell_id {cell_id[i]} appears twice")
    problems.flag(
        (roi_id != OUTSIDE_ROI) & ~np.isin(roi_id, np.asarray(roi_ids, dtype=np.int64)),
        lambda i: f"roi_id {roi_id[i]} is not an ROI of slide {slide_id} in rois.csv",
    )
    sessions = _session_labels(df["all_original_annotations"], labels, problems)

    given_text = df["original_consensus_label"]
    given, given_unknown = _label_indices(given_text, labels)
    written = given_text.to_numpy()
    is_unknown = given_text.is_in(list(given_unknown)).fill_null(False).to_numpy()
    labelled = (sessions >= 0).any(axis=1) if sessions.shape[1] else np.zeros(len(df), dtype=bool)
    problems.flag(
        (given < 0) & ~is_unknown & labelled, lambda i: "original_consensus_label is empty"
    )
    unlabeled_code = labels.index.get(UNLABELED_LABEL)
    problems.flag(
        ~labelled & (given >= 0) & (given != unlabeled_code),
        lambda i: (
            f"original_consensus_label {written[i]!r} for a cell without any expert label "
            f"(all_original_annotations is empty; expected empty or {UNLABELED_LABEL!r})"
        ),
    )
    problems.flag(
        is_unknown,
        lambda i: _unknown_reason(
            str(written[i]), given_unknown[str(written[i])], "original_consensus_label", labels
        ),
    )
    problems.raise_if_any()

    # The consensus depends only on the label string: one rule call per distinct string.
    texts = df["all_original_annotations"].fill_null("")
    computed = {t: labels.index[consensus_label(t.split(","))] for t in texts.unique().to_list()}
    consensus = texts.replace_strict(computed, return_dtype=pl.Int16).to_numpy().astype(np.int16)
    consensus[~labelled] = -1
    given = np.where(labelled, given, -1).astype(np.int16)
    disagree = np.flatnonzero(consensus != given)
    lines = _physical_lines(path, records[disagree].tolist())
    names = labels.labels
    disagreements = pl.DataFrame(
        {
            "line": [lines[int(r)] for r in records[disagree]],
            "cell_id": cell_id[disagree],
            "given": written[disagree].tolist(),
            "given_renamed": [names[int(given[i])] for i in disagree],
            "computed": [names[int(consensus[i])] for i in disagree],
        },
        schema=DISAGREEMENT_SCHEMA,
    )
    return CellBoxes(
        path=path,
        records=records,
        boxes=boxes,
        cell_id=cell_id,
        roi_id=roi_id,
        sessions=sessions,
        consensus=consensus,
        given_consensus=given,
        disagreements=disagreements,
    )


def read_detections(
    path: Path, slide_id: str, bounds: tuple[int, int], image_size: tuple[int, int]
) -> DetectionBoxes:
    """detections.csv rows of `slide_id`: checked (score in 0..1), shifted by `bounds`."""
    df = _read_slide_rows(path, DETECTION_COLUMNS, slide_id)
    records = df[_RECORD].to_numpy().astype(np.int64)
    problems = _Problems(path, records)
    boxes = _boxes(df, problems, bounds, image_size)
    scores, ok = _numbers(df, ("score",), pl.Float64, problems)
    score = scores[:, 0]
    problems.flag(
        ok & ((score < 0.0) | (score > 1.0)),
        lambda i: f"score {score[i]:g} is not a probability in 0..1",
    )
    problems.raise_if_any()
    return DetectionBoxes(path=path, records=records, boxes=boxes, score=score)


ANNOTATION_FILES = ("rois.csv", "cells.csv", "detections.csv")


def read_slide_annotations(
    slide_id: str,
    annotations_dir: Path,
    bounds: tuple[int, int],
    image_size: tuple[int, int],
    labels: LabelTable | None = None,
) -> SlideAnnotations:
    """All three files' rows of one slide, checked against the converted image.

    `bounds` is (openslide.bounds-x, -y) and `image_size` (width, height) of the SM base
    level. Raises `AnnotationInputError` for the first file with problems (rois.csv,
    then cells.csv, then detections.csv). Read from the files at every call (the ANN build
    and its count check each read them: 0.02 s a demo slide, 0.08 s a real-width one).
    """
    return _read_slide_annotations(
        slide_id,
        Path(annotations_dir),
        bounds,
        image_size,
        labels if labels is not None else cell_labels(),
    )


def _read_slide_annotations(
    slide_id: str,
    annotations_dir: Path,
    bounds: tuple[int, int],
    image_size: tuple[int, int],
    labels: LabelTable,
) -> SlideAnnotations:
    if image_size[0] <= 0 or image_size[1] <= 0:
        raise ValueError(f"{slide_id}: image size must be positive, got {image_size}")
    rois = read_rois(annotations_dir / "rois.csv", slide_id, bounds, image_size)
    cells = read_cells(
        annotations_dir / "cells.csv", slide_id, bounds, image_size, rois.roi_id, labels
    )
    detections = read_detections(annotations_dir / "detections.csv", slide_id, bounds, image_size)
    return SlideAnnotations(
        slide_id=slide_id,
        bounds=(int(bounds[0]), int(bounds[1])),
        image_size=(int(image_size[0]), int(image_size[1])),
        labels=labels,
        rois=rois,
        cells=cells,
        detections=detections,
    )
