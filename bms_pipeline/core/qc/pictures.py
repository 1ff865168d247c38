"""Pictures of what was published: the slide's THUMBNAIL, a region with its cell boxes, and a
chart of cells per label, small enough to keep in the Dagster instance for every slide.

An imaging-data engineer checks a slide by looking at it. Every picture here is decoded from
the published DICOM files (the SM frames, the ANN coordinates and their
RecommendedDisplayCIELabValue), never re-rendered from the MIRAX source, so it shows what a
viewer will show. Only the frames a picture needs are decoded (highdicom's frame reader uses
the offset tables), so a 10 GB base level costs a few tiles.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.errors import InvalidDicomError

from bms_pipeline.core.dicom.files import read_dataset
from bms_pipeline.core.dicom.levels import WsmLevel, levels_of

THUMBNAIL_SIDE = 256
"""Long side of the thumbnail pictures (UI and collection page), in pixels."""

REGION_SIDE = 512
"""Long side of the region picture with the boxes."""

BOX_SIDE = 32
"""The region is read at the scale where the median cell box is about this many pixels:
cells are then recognisable (a nucleus and its cytoplasm) and about 250 boxes fit."""

JPEG_QUALITY = 75
"""A 256 px thumbnail is 8-15 KB, a 512 px region 30-50 KB at this quality."""

ROI_OUTLINE = (20, 20, 20)
"""ROIs are drawn dark: their own display colour (white) vanishes on a pale smear."""


# -- SM instances ----------------------------------------------------------------------------


SmInstance = WsmLevel
"""What a picture needs of a published SM image: one instance, or a level concatenated over
several (`core.dicom.levels`)."""


def sm_instances(files: Iterable[Path]) -> list[WsmLevel]:
    """The images of an SM series, VOLUME levels first from the largest."""
    return levels_of(files)


def _volume_levels(instances: Sequence[SmInstance]) -> list[SmInstance]:
    levels = [i for i in instances if i.flavor == "VOLUME"]
    if not levels:
        raise ValueError("the SM series has no VOLUME instance")
    return sorted(levels, key=lambda i: -i.width)


def _read_tiles(
    instance: SmInstance, columns: range, rows: range, reduction: int = 1
) -> np.ndarray:
    """The tiles of `columns` x `rows` of a TILED_FULL instance, each reduced by an integer
    factor (Pillow's box filter), pasted edge to edge."""
    import highdicom as hd

    if not instance.raster_order:
        raise ValueError(
            f"{instance.path}: DimensionOrganizationType is not TILED_FULL; "
            "only tiled-full instances and our concatenations are read"
        )
    tw, th = math.ceil(instance.tile_width / reduction), math.ceil(instance.tile_height / reduction)
    canvas = np.full((len(rows) * th, len(columns) * tw, 3), 255, dtype=np.uint8)
    readers: dict[Path, hd.io.ImageFileReader] = {}
    try:
        for j, ty in enumerate(rows):
            for i, tx in enumerate(columns):
                part, index = instance.part_of_frame(ty * instance.across + tx)
                reader = readers.get(part.path)
                if reader is None:
                    reader = readers[part.path] = hd.io.ImageFileReader(part.path)
                    reader.open()
                # Stored colours: the pictures show the data as published (ICC sRGB).
                frame = reader.read_frame(index, correct_color=False)
                if frame.ndim == 2:
                    frame = np.stack([frame] * 3, axis=-1)
                tile = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
                if reduction > 1:
                    tile = tile.reduce(reduction)
                canvas[j * th : j * th + tile.height, i * tw : i * tw + tile.width] = np.asarray(
                    tile
                )
    finally:
        for reader in readers.values():
            reader.close()
    return canvas


def read_region(instance: SmInstance, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Pixels (x, y, width, height) of one level, decoding only the frames that cover them."""
    if width <= 0 or height <= 0 or x < 0 or y < 0:
        raise ValueError(f"{instance.path}: empty or negative region {(x, y, width, height)}")
    x2, y2 = min(x + width, instance.width), min(y + height, instance.height)
    columns = range(x // instance.tile_width, math.ceil(x2 / instance.tile_width))
    rows = range(y // instance.tile_height, math.ceil(y2 / instance.tile_height))
    tiles = _read_tiles(instance, columns, rows)
    ox, oy = columns.start * instance.tile_width, rows.start * instance.tile_height
    return tiles[y - oy : y2 - oy, x - ox : x2 - ox]


def read_whole(instance: SmInstance, side: int) -> np.ndarray:
    """The whole instance with its long side reduced to `side` (never enlarged); large levels
    are reduced tile by tile before they are put together."""
    long_side = max(instance.width, instance.height)
    reduction = 1
    while (
        long_side / (2 * reduction) >= side
        and 2 * reduction <= min(instance.tile_width, instance.tile_height)
        and instance.tile_width % (2 * reduction) == 0
        and instance.tile_height % (2 * reduction) == 0
    ):
        reduction *= 2
    tiles = _read_tiles(instance, range(instance.across), range(instance.down), reduction)
    whole = tiles[: math.ceil(instance.height / reduction), : math.ceil(instance.width / reduction)]
    return fit(whole, side)


def fit(image: np.ndarray, side: int) -> np.ndarray:
    """`image` with its long side reduced to `side` (never enlarged)."""
    height, width = image.shape[:2]
    scale = min(1.0, side / max(width, height))
    if scale == 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def thumbnail_picture(files: Iterable[Path], side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The series' THUMBNAIL instance as published, reduced to `side`."""
    instances = sm_instances(files)
    thumbnails = [i for i in instances if i.flavor == "THUMBNAIL"]
    if not thumbnails:
        raise ValueError("the SM series has no THUMBNAIL instance")
    return read_whole(thumbnails[0], side)


def compared_level_picture(files: Iterable[Path], side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The VOLUME level the THUMBNAIL check compares the THUMBNAIL with
    (`core.dicom.thumbnail.compared_level`: the smallest at least as large as the
    THUMBNAIL), as published, reduced to `side`."""
    from bms_pipeline.core.dicom.thumbnail import compared_level

    instances = sm_instances(files)
    levels = _volume_levels(instances)
    thumbnail = next((i for i in instances if i.flavor == "THUMBNAIL"), None)
    if thumbnail is None:
        return read_whole(levels[-1], side)
    index = compared_level(
        (thumbnail.width, thumbnail.height), [(i.width, i.height) for i in levels]
    )
    return read_whole(levels[index if index is not None else -1], side)


# -- ANN series ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxGroup:
    """One annotation group's rectangles, in base-level pixels, and its display colour."""

    label: str
    rgb: tuple[int, int, int]
    boxes: np.ndarray  # (n, 4): x1, y1, x2, y2


def lab_to_rgb(dicom_lab: Sequence[int]) -> tuple[int, int, int]:
    """A RecommendedDisplayCIELabValue (PS3.3 C.10.7.1.1, scaled to 0-65535) as sRGB."""
    from highdicom.color import CIELabColor

    r, g, b = CIELabColor.from_dicom_value(tuple(int(v) for v in dicom_lab)).to_rgb()
    return int(r), int(g), int(b)


def read_box_groups(ann_file: Path) -> list[BoxGroup]:
    """The RECTANGLE groups of a published ANN file (pydicom alone: no validation pass over
    every measurement), with each group's recommended colour."""
    ds = read_dataset(ann_file)
    if str(ds.get("AnnotationCoordinateType", "2D")) != "2D":
        raise ValueError(f"{ann_file}: only 2D (image) annotation coordinates are drawn")
    groups: list[BoxGroup] = []
    for group in ds.AnnotationGroupSequence:
        if group.GraphicType != "RECTANGLE":
            continue
        if "DoublePointCoordinatesData" in group:
            flat = np.frombuffer(group.DoublePointCoordinatesData, dtype="<f8")
        else:
            flat = np.frombuffer(group.PointCoordinatesData, dtype="<f4")
        corners = flat.astype(np.float64).reshape(-1, 4, 2)
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        lab = group.get("RecommendedDisplayCIELabValue")
        rgb = lab_to_rgb(lab) if lab is not None else (255, 255, 0)
        groups.append(BoxGroup(str(group.AnnotationGroupLabel), rgb, boxes))
    return groups


def label_counts(groups: Iterable[BoxGroup]) -> list[tuple[str, int, tuple[int, int, int]]]:
    """(label, boxes, colour), most frequent first, labels of several groups summed."""
    counts: dict[str, int] = {}
    colours: dict[str, tuple[int, int, int]] = {}
    for g in groups:
        counts[g.label] = counts.get(g.label, 0) + len(g.boxes)
        colours.setdefault(g.label, g.rgb)
    return sorted(((k, n, colours[k]) for k, n in counts.items()), key=lambda t: (-t[1], t[0]))


# -- the region with its boxes ---------------------------------------------------------------


@dataclass(frozen=True)
class DrawnBox:
    label: str
    rgb: tuple[int, int, int]
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in picture pixels


@dataclass(frozen=True)
class RegionPicture:
    """A region of the slide with the boxes drawn on it, and how it was made."""

    window: tuple[int, int, int, int]  # x, y, width, height in base-level pixels
    scale: float  # picture pixels per base-level pixel
    level: str  # the file whose frames were decoded
    slide: np.ndarray  # the decoded pixels, before drawing
    image: np.ndarray  # with the boxes and ROI outlines
    boxes: tuple[DrawnBox, ...]
    rois: tuple[tuple[float, float, float, float], ...]


def choose_window(
    cells: np.ndarray,
    rois: np.ndarray,
    image_size: tuple[int, int],
    side: int = REGION_SIDE,
    box_side: int = BOX_SIDE,
) -> tuple[tuple[int, int, int, int], float]:
    """The base-level window to show and its downsample: sized so the median cell box is
    about `box_side` pixels in a `side` picture, centred on the ROI holding the most cells
    (the expert-labelled monolayer), else on the densest patch of cells."""
    width, height = image_size
    if len(cells):
        sides = np.maximum(cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1])
        downsample = max(1.0, float(np.median(sides)) / box_side)
    else:
        downsample = max(1.0, max(width, height) / side)
    span = min(round(side * downsample), width), min(round(side * downsample), height)
    centres = (cells[:, :2] + cells[:, 2:]) / 2 if len(cells) else np.zeros((0, 2))
    if len(rois) and len(centres):
        inside = [int(((centres >= r[:2]) & (centres <= r[2:])).all(axis=1).sum()) for r in rois]
        best = rois[int(np.argmax(inside))] if max(inside) else rois[0]
        cx, cy = (best[0] + best[2]) / 2, (best[1] + best[3]) / 2
    elif len(rois):
        cx, cy = (rois[0][0] + rois[0][2]) / 2, (rois[0][1] + rois[0][3]) / 2
    elif len(centres):
        # The window-sized cell of a grid that holds the most box centres.
        bins = np.floor(centres / np.array(span, dtype=np.float64)).astype(np.int64)
        keys, inverse, counts = np.unique(bins, axis=0, return_inverse=True, return_counts=True)
        members = centres[inverse.ravel() == int(np.argmax(counts))]
        cx, cy = members.mean(axis=0)
        del keys
    else:
        cx, cy = width / 2, height / 2
    x = int(min(max(0, round(cx - span[0] / 2)), width - span[0]))
    y = int(min(max(0, round(cy - span[1] / 2)), height - span[1]))
    return (x, y, span[0], span[1]), downsample


def _intersects(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = window
    return (boxes[:, 2] > x) & (boxes[:, 0] < x + w) & (boxes[:, 3] > y) & (boxes[:, 1] < y + h)


def region_picture(
    sm_files: Iterable[Path],
    cell_groups: Sequence[BoxGroup],
    roi_groups: Sequence[BoxGroup] = (),
    side: int = REGION_SIDE,
    box_side: int = BOX_SIDE,
) -> RegionPicture:
    """A region of the published slide where cells are visible, with `cell_groups` drawn in
    their colours and the ROIs outlined. The pixels come from the pyramid level closest
    to (not coarser than) the scale shown."""
    levels = _volume_levels(sm_instances(sm_files))
    base = levels[0]
    cells = np.concatenate([g.boxes for g in cell_groups]) if cell_groups else np.zeros((0, 4))
    rois = np.concatenate([g.boxes for g in roi_groups]) if roi_groups else np.zeros((0, 4))
    window, downsample = choose_window(cells, rois, (base.width, base.height), side, box_side)
    x, y, w, h = window
    level = max(
        (lv for lv in levels if base.width / lv.width <= downsample * 1.0001),
        key=lambda lv: base.width / lv.width,
    )
    ds_level = base.width / level.width
    lx, ly = int(x / ds_level), int(y / ds_level)
    lw = max(1, min(level.width - lx, math.ceil(w / ds_level)))
    lh = max(1, min(level.height - ly, math.ceil(h / ds_level)))
    pixels = read_region(level, lx, ly, lw, lh)
    size = (max(1, round(w / downsample)), max(1, round(h / downsample)))
    slide = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
    scale = size[0] / w
    canvas = Image.fromarray(slide.copy())
    draw = ImageDraw.Draw(canvas)

    def to_picture(b: np.ndarray) -> tuple[float, float, float, float]:
        return (
            float((b[0] - x) * scale),
            float((b[1] - y) * scale),
            float((b[2] - x) * scale),
            float((b[3] - y) * scale),
        )

    drawn_rois = tuple(to_picture(b) for b in rois[_intersects(rois, window)]) if len(rois) else ()
    for r in drawn_rois:
        draw.rectangle(r, outline=ROI_OUTLINE, width=2)
    drawn: list[DrawnBox] = []
    for group in cell_groups:
        for b in group.boxes[_intersects(group.boxes, window)]:
            drawn.append(DrawnBox(group.label, group.rgb, to_picture(b)))
    for d in drawn:
        x1, y1, x2, y2 = d.box
        # A dark rim outside the colour keeps pale label colours visible on a pale smear.
        draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=(0, 0, 0), width=1)
        draw.rectangle((x1, y1, x2, y2), outline=d.rgb, width=2)
    return RegionPicture(
        window=window,
        scale=scale,
        level=level.path.name,
        slide=slide,
        image=np.asarray(canvas),
        boxes=tuple(drawn),
        rois=drawn_rois,
    )


# -- the chart -------------------------------------------------------------------------------


def bar_chart(
    counts: Sequence[tuple[str, int, tuple[int, int, int]]], width: int = 520, row: int = 15
) -> np.ndarray:
    """Horizontal bars of (label, count, colour), one row per label, the count at the end."""
    font = ImageFont.load_default(size=11)
    label_width = 230
    height = max(1, len(counts)) * row + 6
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top = max((n for _, n, _ in counts), default=1) or 1
    room = width - label_width - 60
    for i, (label, n, rgb) in enumerate(counts):
        y = 3 + i * row
        draw.text((4, y), label[:38], fill=(0, 0, 0), font=font)
        length = max(1, round(room * n / top))
        draw.rectangle((label_width, y + 2, label_width + length, y + row - 3), fill=rgb)
        draw.rectangle(
            (label_width, y + 2, label_width + length, y + row - 3), outline=(90, 90, 90)
        )
        draw.text((label_width + length + 4, y), str(n), fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


# -- encoding --------------------------------------------------------------------------------


def jpeg_bytes(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """A PNG with a 256-colour palette: charts of up to 51 label colours plus anti-aliased
    text keep their colours, at a third of the RGB size (8 KB instead of 25 KB measured
    for 30 labels)."""
    buffer = io.BytesIO()
    palette = Image.fromarray(image).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def markdown_image(alt: str, data: bytes, mime: str = "image/jpeg") -> str:
    """A markdown image with the picture inline as a data URI (what Dagster's UI renders
    for `MetadataValue.md`; no file or server needed)."""
    return f"![{alt}](data:{mime};base64,{base64.b64encode(data).decode('ascii')})"


# -- what the UI shows -------------------------------------------------------------------------

PICTURE_ERRORS = (ValueError, OSError, KeyError, IndexError, AttributeError, InvalidDicomError)
"""What a picture that cannot be made raises (an unreadable file, a missing instance): the
picture says so instead, and the asset, already published and checked, is not failed."""


def thumbnail_markdown(sm_files: Sequence[Path]) -> str:
    """The published THUMBNAIL, as markdown with the image inline."""
    try:
        picture = thumbnail_picture(sm_files)
    except PICTURE_ERRORS as exc:
        return f"no picture: {exc}"
    return markdown_image("THUMBNAIL as published", jpeg_bytes(picture))


def thumbnail_check_markdown(sm_files: Sequence[Path]) -> str:
    """The two pictures the THUMBNAIL check compares, side by side, with their captions."""
    parts: list[str] = []
    for caption, make in (
        ("THUMBNAIL", thumbnail_picture),
        ("the level it is compared with", compared_level_picture),
    ):
        try:
            image = markdown_image(caption, jpeg_bytes(make(sm_files)))
        except PICTURE_ERRORS as exc:
            image = f"no picture: {exc}"
        parts.append(f"**{caption}**\n\n{image}")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class AnnotationPictures:
    """The markdown of the region with its boxes, and of the chart of cells per label."""

    region: str
    chart: str


def cell_series_files(ann_dir: Path) -> tuple[Path | None, Path | None]:
    """(the cell boxes to draw, the ROIs): the consensus series, or on slides without
    expert sessions the unlabeled boxes; each None where the slide has none."""
    cells = next(
        (p for p in (ann_dir / "consensus.dcm", ann_dir / "unlabeled.dcm") if p.is_file()), None
    )
    rois = ann_dir / "rois.dcm"
    return cells, rois if rois.is_file() else None


def annotation_pictures(sm_files: Sequence[Path], ann_dir: Path) -> AnnotationPictures:
    """A region of the published slide with the consensus (or unlabeled) boxes in their
    label colours and the ROIs outlined, and the chart of boxes per label."""
    try:
        cells_file, rois_file = cell_series_files(ann_dir)
        cells = read_box_groups(cells_file) if cells_file else []
        rois = read_box_groups(rois_file) if rois_file else []
        picture = region_picture(sm_files, cells, rois)
    except PICTURE_ERRORS as exc:
        return AnnotationPictures(f"no picture: {exc}", "")
    x, y, w, h = picture.window
    series = cells_file.stem if cells_file else "cell"
    region = (
        markdown_image(f"{series} boxes on the slide", jpeg_bytes(picture.image))
        + f"\n\n{len(picture.boxes)} {series} box(es) and {len(picture.rois)} ROI(s) in the "
        f"region x {x}-{x + w}, y {y}-{y + h} of the base level (shown at "
        f"{picture.scale:.2f} px per pixel)"
    )
    counts = label_counts(cells)
    chart = (
        markdown_image(f"{series} boxes per label", png_bytes(bar_chart(counts)), "image/png")
        if counts
        else "no cell boxes"
    )
    return AnnotationPictures(region, chart)
