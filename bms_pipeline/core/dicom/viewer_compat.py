"""Two SM properties chosen for the viewers people use: the slide's orientation, and a nominal
pixel spacing for the overview.

Orientation. `dicom-microscopy-viewer` (Slim, OHIF) turns its view by
`atan2(-column_direction[0], row_direction[0]) + 90°` computed from ImageOrientationSlide. Only
`row[0] == 0, column[0] == 1` draws the pixel matrix unturned, i.e. as OpenSlide shows the MIRAX.
Of the two such orientations, `[0, 1, 0, 1, 0, 0]` is the one whose normal (row x column) is -Z:
the slide seen from above, not mirrored. It is wsidicom's rotation 0 (rows along the slide's long
Y edge, columns along its short X edge), which also puts a landscape overview (about 3:1) on the
75 x 25 mm slide with nearly square pixels. wsidicomizer's MIRAX default (rotation 270,
`[1, 0, 0, 0, -1, 0]`, rows along the short edge) made the viewer draw every slide turned by 90°.
The levels' Total Pixel Matrix Origin keeps the offset wsidicomizer read from the MIRAX bounds,
expressed in the new axes (image x along slide Y, image y along slide X); the overview and label,
placed by default at a slide corner, move to rotation 0's corner.

Overview pixel spacing. PS3.3 C.7.6.16.2.1 requires Pixel Spacing unless Image Type value 3 is
LABEL or OVERVIEW, where it "may be present". MIRAX stores no scale for its slide preview, so
wsidicomizer writes an empty Pixel Measures item, which highdicom `imread` cannot open. The
overview photographs the whole standard slide (the 75 x 25 mm region its default origin already
assumes), so its nominal spacing is 75 mm over its long side, the same along both axes.
"""

from __future__ import annotations

from dataclasses import replace

from wsidicom.geometry import PointMm, SizeMm  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.metadata import ImageCoordinateSystem  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.metadata.image import ImageType  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.metadata import WsiDicomizerMetadata  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.sources.openslide_like.openslide_like_image_data import (  # pyright: ignore[reportMissingTypeStubs]
    OpenSlideLikeAssociatedImageData,
)

VIEWER_ROTATION = 0.0  # wsidicom's rotation whose orientation is [0, 1, 0, 1, 0, 0]
SLIDE_LONG_EDGE_MM = 75.0


def _rotated(
    system: ImageCoordinateSystem | None, image_type: ImageType
) -> ImageCoordinateSystem | None:
    if system is None or system.rotation == VIEWER_ROTATION:
        return system
    if image_type == ImageType.VOLUME:
        # The origin is measured (bounds x, y along image x, y): image x now runs along slide Y.
        origin = (
            PointMm(system.origin.y, system.origin.x) if system.rotation == 270 else system.origin
        )
        return ImageCoordinateSystem(
            origin=origin, rotation=VIEWER_ROTATION, z_offset=system.z_offset
        )
    return ImageCoordinateSystem.default_for(VIEWER_ROTATION, image_type, system.z_offset)


def viewer_coordinate_systems(metadata: WsiDicomizerMetadata) -> WsiDicomizerMetadata:
    """The metadata with every image's coordinate system at the viewer orientation (module doc)."""
    pyramid = metadata.pyramid
    pyramid = replace(
        pyramid,
        image=replace(
            pyramid.image,
            image_coordinate_system=_rotated(
                pyramid.image.image_coordinate_system, ImageType.VOLUME
            ),
        ),
    )
    overview, label = metadata.overview, metadata.label
    # wsidicom types these as always set; metadata built field by field can leave them None.
    if overview is not None and overview.image is not None:  # pyright: ignore[reportUnnecessaryComparison]
        overview = replace(
            overview,
            image=replace(
                overview.image,
                image_coordinate_system=_rotated(
                    overview.image.image_coordinate_system, ImageType.OVERVIEW
                ),
            ),
        )
    if label is not None and label.image is not None:  # pyright: ignore[reportUnnecessaryComparison]
        label = replace(
            label,
            image=replace(
                label.image,
                image_coordinate_system=_rotated(
                    label.image.image_coordinate_system, ImageType.LABEL
                ),
            ),
        )
    return replace(metadata, pyramid=pyramid, overview=overview, label=label)


class NominalSpacingOverviewImageData(OpenSlideLikeAssociatedImageData):
    """The MIRAX slide preview with the nominal pixel spacing of a whole 75 mm slide."""

    @property
    def pixel_spacing(self) -> SizeMm:
        size = self.image_size
        spacing = SLIDE_LONG_EDGE_MM / max(size.width, size.height)
        return SizeMm(spacing, spacing)
