"""Cell, ROI and nucleus boxes as DICOM Microscopy Bulk Simple Annotations (DESIGN.md §4).

- `labels`: cell_labels.csv as typed codes and display colours;
- `inputs`: one slide's rows of rois.csv, cells.csv and detections.csv, checked and shifted
  onto the converted image, with the recomputed expert consensus;
- `ann`: the ANN series built with highdicom, written atomically, and read back for checks.

No Dagster here: the ``ann_series`` asset only wires these functions together.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy exports below resolve to
    from bms_pipeline.core.annotations.ann import (
        AnnResult,
        SeriesContent,
        SeriesResult,
        base_level_dataset,
        build_ann_series,
        count_problems,
        expected_counts,
        read_back,
        read_series_content,
    )
    from bms_pipeline.core.annotations.inputs import (
        AnnotationInputError,
        SlideAnnotations,
        read_slide_annotations,
    )
    from bms_pipeline.core.annotations.labels import LabelTable, cell_labels

# Re-exported lazily: the consensus rule (used by the demo-data generator) must not pull in
# highdicom and wsidicomizer just to be imported.
_EXPORTS = {
    "AnnResult": "ann",
    "SeriesContent": "ann",
    "SeriesResult": "ann",
    "base_level_dataset": "ann",
    "build_ann_series": "ann",
    "count_problems": "ann",
    "expected_counts": "ann",
    "read_back": "ann",
    "read_series_content": "ann",
    "AnnotationInputError": "inputs",
    "SlideAnnotations": "inputs",
    "read_slide_annotations": "inputs",
    "LabelTable": "labels",
    "cell_labels": "labels",
}

__all__ = [
    "AnnResult",
    "AnnotationInputError",
    "LabelTable",
    "SeriesContent",
    "SeriesResult",
    "SlideAnnotations",
    "base_level_dataset",
    "build_ann_series",
    "count_problems",
    "cell_labels",
    "expected_counts",
    "read_back",
    "read_series_content",
    "read_slide_annotations",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
