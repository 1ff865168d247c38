"""The cell label vocabulary (reference/cell_labels.csv) as typed DICOM codes and colours.

Every annotation group carries an AnnotatedPropertyCategory and -Type code, and a viewer
shows it in its RecommendedDisplayCIELabValue. Both come from here, so one table decides
what a label means in every series of every slide.

Codes, meanings and colours are those of IDC's published BMDeep objects, as the table
writes them (`display_color`, and ``Anatomical structure`` where the standard's CID 7150
says ``Anatomical Structure``), so that queries over IDC's objects and ours agree. Where
pydicom's dictionary words a concept otherwise, `LabelTable.normalised` records it (a
validator may warn about it; see KNOWN_NOISE).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from highdicom.color import CIELabColor
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from bms_pipeline.core.annotations.consensus import NO_CONSENSUS, apply_rename
from bms_pipeline.core.reference import reference_path

__all__ = [
    "DETECTION_LABEL",
    "NO_CONSENSUS",
    "ROI_LABEL",
    "LabelCode",
    "LabelTable",
    "UnknownLabelError",
    "cell_labels",
    "load_label_table",
]

ROI_LABEL = "region_of_interest"
"""Label of the monolayer regions of interest (rois.csv)."""

UNLABELED_LABEL = "haematological_structure"
"""Label of cells no expert labelled: the table's generic entry, as IDC's BMDeep conversion
writes its `Unlabeled cell bounding boxes`."""
DETECTION_LABEL = UNLABELED_LABEL
"""Label of the detector's class-less nucleus boxes: the same generic entry."""

CELL_LABELS_CSV = "cell_labels.csv"
_COLUMNS = (
    "label",
    "category_code",
    "category_scheme",
    "category_meaning",
    "type_code",
    "type_scheme",
    "type_meaning",
    "display_color",
)
_CATEGORY_CID = "cid7150"  # Segmentation Property Categories, used for annotation groups too


class UnknownLabelError(KeyError):
    """A label (after renames) that cell_labels.csv does not define."""

    def __init__(self, label: str, where: str) -> None:
        super().__init__(label)
        self.label = label
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: unknown cell label {self.label!r} (not in {CELL_LABELS_CSV})"


@dataclass(frozen=True)
class LabelCode:
    """One label of the vocabulary: its codes and its display colour (sRGB 0..255)."""

    label: str
    category: Code
    type: Code
    rgb: tuple[int, int, int]

    @property
    def cielab(self) -> CIELabColor:
        """The colour as DICOM stores it (RecommendedDisplayCIELabValue)."""
        return CIELabColor.from_rgb(*self.rgb)


@dataclass(frozen=True)
class LabelTable:
    """All labels of cell_labels.csv in file order, plus the meanings that were normalised."""

    source: Path
    codes: tuple[LabelCode, ...]
    normalised: tuple[tuple[str, str, str], ...]  # (label, meaning used, pydicom's meaning)
    _by_label: dict[str, LabelCode] = field(init=False, repr=False, compare=False)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_label", {c.label: c for c in self.codes})
        object.__setattr__(self, "_index", {c.label: i for i, c in enumerate(self.codes)})

    def __contains__(self, label: object) -> bool:
        return label in self._by_label

    def __iter__(self) -> Iterator[LabelCode]:
        return iter(self.codes)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def index(self) -> dict[str, int]:
        """Label -> its position in the table (the int16 label indices of the readers)."""
        return self._index

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.codes)

    def get(self, label: str, where: str = CELL_LABELS_CSV) -> LabelCode:
        """The code of a canonical label; `where` names the file and row for the error."""
        try:
            return self._by_label[label]
        except KeyError:
            raise UnknownLabelError(label, where) from None

    def resolve(self, source_label: str, where: str) -> LabelCode:
        """A label as the source files write it (old or German names included)."""
        return self.get(apply_rename(source_label), where)


def _known_meanings(scheme: str, value: str) -> list[str]:
    """Meanings pydicom's dictionary has for (scheme, value), in keyword order."""
    collection = _scheme_index().get(scheme, {})
    return collection.get(value, [])


@cache
def _scheme_index() -> dict[str, dict[str, list[str]]]:
    index: dict[str, dict[str, list[str]]] = {}
    for scheme in ("SCT", "DCM", "NCIt", "LN"):
        by_value: dict[str, list[str]] = {}
        for _keyword, code in sorted(getattr(codes, scheme).concepts.items()):
            by_value.setdefault(code.value, []).append(code.meaning)
        index[scheme] = by_value
    return index


def _standard_code(value: str, scheme: str, meaning: str, preferred_cid: str | None) -> Code:
    """The code with the standard's meaning where pydicom knows it, else as written."""
    known = _known_meanings(scheme, value)
    if not known or meaning in known:
        return Code(value, scheme, meaning)
    if preferred_cid is not None:
        for code in getattr(codes, preferred_cid).concepts.values():
            if code.value == value and code.scheme_designator == scheme:
                return Code(value, scheme, code.meaning)
    return Code(value, scheme, known[0])


def _hex_color(text: str, where: str) -> tuple[int, int, int]:
    """`#rrggbb` (IDC's display colours) as sRGB 0..255."""
    value = text.strip().removeprefix("#")
    if len(value) != 6 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"{where}: display_color {text!r} is not #rrggbb")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def load_label_table(path: Path | None = None) -> LabelTable:
    """Read cell_labels.csv (the shipped copy by default) into a `LabelTable`.

    Raises ValueError naming the file and 1-based line for a missing column, a blank
    field or a label defined twice.
    """
    path = Path(path) if path is not None else reference_path(CELL_LABELS_CSV)
    rows: list[tuple[int, dict[str, str]]] = []
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: missing columns {missing}")
        for line, row in enumerate(reader, start=2):
            blank = [c for c in _COLUMNS if not (row.get(c) or "").strip()]
            if blank:
                raise ValueError(f"{path}:{line}: empty {blank}")
            rows.append((line, {c: row[c].strip() for c in _COLUMNS}))
    seen: set[str] = set()
    entries: list[LabelCode] = []
    normalised: list[tuple[str, str, str]] = []
    for line, row in rows:
        label = row["label"]
        if label in seen:
            raise ValueError(f"{path}:{line}: label {label!r} is defined twice")
        seen.add(label)
        # The meanings as IDC's published objects write them ("Anatomical structure"), so
        # that queries over IDC's objects and ours agree; where pydicom's dictionary words
        # a concept otherwise, `normalised` records it.
        category = Code(row["category_code"], row["category_scheme"], row["category_meaning"])
        type_ = Code(row["type_code"], row["type_scheme"], row["type_meaning"])
        standard = (
            _standard_code(
                row["category_code"], row["category_scheme"], row["category_meaning"], _CATEGORY_CID
            ),
            _standard_code(row["type_code"], row["type_scheme"], row["type_meaning"], None),
        )
        for used, known in zip((category, type_), standard, strict=True):
            if used.meaning != known.meaning:
                normalised.append((label, used.meaning, known.meaning))
        rgb = _hex_color(row["display_color"], f"{path}:{line}")
        entries.append(LabelCode(label=label, category=category, type=type_, rgb=rgb))
    return LabelTable(source=path, codes=tuple(entries), normalised=tuple(normalised))


@cache
def cell_labels() -> LabelTable:
    """The shipped vocabulary, loaded once per process."""
    return load_label_table()
