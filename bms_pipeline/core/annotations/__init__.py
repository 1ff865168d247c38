"""Cell, ROI and nucleus boxes as DICOM Microscopy Bulk Simple Annotations (DESIGN.md §4).

- `labels`: cell_labels.csv as typed codes and display colours;
- `inputs`: one slide's rows of rois.csv, cells.csv and detections.csv, checked and shifted
  onto the converted image, with the recomputed expert consensus;
- `ann`: the ANN series built with highdicom, written atomically, and read back for checks.

No Dagster here: the ``ann_series`` asset only wires these functions together.
"""

from bms_pipeline.core.annotations.ann import (
    AnnResult,
    SeriesContent,
    SeriesResult,
    base_level_dataset,
    build_ann_series,
    expected_counts,
    read_back,
    read_series_content,
)
from bms_pipeline.core.annotations.inputs import (
    AnnotationInputError,
    SlideAnnotations,
    read_slide_annotations,
    slide_bounds,
)
from bms_pipeline.core.annotations.labels import LabelTable, cell_labels

__all__ = [
    "AnnResult",
    "AnnotationInputError",
    "LabelTable",
    "SeriesContent",
    "SeriesResult",
    "SlideAnnotations",
    "base_level_dataset",
    "build_ann_series",
    "cell_labels",
    "expected_counts",
    "read_back",
    "read_series_content",
    "read_slide_annotations",
    "slide_bounds",
]
