"""Two SM attributes chosen for the viewers people use, set on every SM instance after wsidicom.

Orientation. `dicom-microscopy-viewer` (Slim, OHIF) turns its view by
`atan2(-column_direction[0], row_direction[0]) + 90°` computed from ImageOrientationSlide. Only
`row[0] == 0, column[0] == 1` draws the pixel matrix unrotated, i.e. as OpenSlide shows the
MIRAX. Of the two such orientations, `[0, 1, 0, 1, 0, 0]` is the one whose normal (row x
column) is -Z, the slide seen from above and not mirrored; it is wsidicom's rotation 0 (rows
along the slide's long Y edge, columns along its short X edge), which also puts a landscape
overview (about 3:1) on the 75 x 25 mm slide with nearly square pixels. wsidicomizer's MIRAX
default (rotation 270, `[1, 0, 0, 0, -1, 0]`) made the viewer draw every slide turned by 90°.
The Total Pixel Matrix Origin of the levels keeps the offset wsidicomizer read from the MIRAX
bounds, expressed in the new axes (image x -> slide Y, image y -> slide X); the overview's
default corner becomes rotation 0's corner, (0, 0).

Overview pixel spacing. PS3.3 C.7.6.16.2.1 requires Pixel Spacing unless Image Type value 3 is
LABEL or OVERVIEW, where it "may be present". MIRAX stores no scale for its slide preview, so
wsidicom writes an empty Pixel Measures item, which highdicom `imread` cannot open. The
overview photographs the whole standard slide (the 75 x 25 mm that its origin already
assumes), so its nominal spacing is 75 mm over its long side; it is written as such.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat

VIEWER_ORIENTATION = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
WSIDICOMIZER_MIRAX_ORIENTATION = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
SLIDE_LONG_EDGE_MM = 75.0


def _ds(value: float) -> DSfloat:
    return DSfloat(value, auto_format=True)


def apply_viewer_conventions(dataset: Dataset) -> Dataset:
    """Set the viewer orientation (and an overview's nominal spacing) on an SM dataset;
    anything that is not an SM image is returned unchanged."""
    if dataset.get("Modality") != "SM" or "ImageOrientationSlide" not in dataset:
        return dataset
    old = [float(v) + 0.0 for v in dataset.ImageOrientationSlide]  # + 0.0: -0.0 == 0.0 anyway
    image_type = list(dataset.get("ImageType", []))
    overview = len(image_type) > 2 and image_type[2] in ("OVERVIEW", "LABEL")
    dataset.ImageOrientationSlide = [_ds(v) for v in VIEWER_ORIENTATION]
    if old == WSIDICOMIZER_MIRAX_ORIENTATION and "TotalPixelMatrixOriginSequence" in dataset:
        origin = dataset.TotalPixelMatrixOriginSequence[0]
        if overview:
            # Placed by default at the slide corner of rotation 270; rotation 0's corner is (0, 0).
            x, y = 0.0, 0.0
        else:
            # Measured from the MIRAX bounds with image x along slide X; now image x runs along Y.
            y = float(origin.XOffsetInSlideCoordinateSystem)
            x = float(origin.YOffsetInSlideCoordinateSystem)
        origin.XOffsetInSlideCoordinateSystem = _ds(x)
        origin.YOffsetInSlideCoordinateSystem = _ds(y)
    if len(image_type) > 2 and image_type[2] == "OVERVIEW":
        _set_overview_spacing(dataset)
    return dataset


def _set_overview_spacing(dataset: Dataset) -> None:
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if not shared:
        return
    group = shared[0]
    if "PixelMeasuresSequence" not in group or not group.PixelMeasuresSequence:
        group.PixelMeasuresSequence = [Dataset()]
    measures = group.PixelMeasuresSequence[0]
    if "PixelSpacing" in measures:
        return
    columns = int(dataset.get("TotalPixelMatrixColumns", dataset.Columns))
    rows = int(dataset.get("TotalPixelMatrixRows", dataset.Rows))
    spacing = SLIDE_LONG_EDGE_MM / max(columns, rows)
    measures.PixelSpacing = [_ds(spacing), _ds(spacing)]
