"""A MIRAX writer whose slides OpenSlide 4 opens, for demo data and test fixtures.

No real BMDeep slide can be downloaded, so the pipeline is exercised on slides it writes
itself. The layout follows OpenSlide's MIRAX reader (see DESIGN.md section 8): camera
fields of d x d images with overlap between fields, a position buffer that makes
unscanned fields sparse (and so gives non-zero bounds), dyadic levels built from
concatenated, downsampled level-0 images, and macro, label and preview images.

Every stored level-0 image is a crop of one procedural canvas, so overlapping fields agree
pixel for pixel and OpenSlide's composite equals the ground truth exactly in PNG mode.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from bms_pipeline.core.mirax.format import (
    HIER_RECORD,
    INDEX_VERSION,
    NONHIER_PAGE,
    POSITION_RECORD,
    SLIDEDAT,
)
from bms_pipeline.core.synthetic.smear_content import (
    BACKGROUND_RGB,
    SmearCells,
    render_region,
    to_uint8,
)

ImageFormat = Literal["JPEG", "PNG"]
PositionLayer = Literal["vimslide", "stitching", "none"]
PreviewExtent = Literal["bounds", "canvas", "none"]


@dataclass(frozen=True)
class MiraxGeometry:
    """The image grid of a MIRAX slide, in level-0 pixels.

    `image_width` x `image_height` is DIGITIZER_WIDTH x DIGITIZER_HEIGHT; both must be
    divisible by 2**(levels-1) so that every level is an exact box-filter of level 0.
    """

    image_width: int = 256
    image_height: int = 192
    fields_x: int = 6
    fields_y: int = 5
    divisions: int = 2
    overlap_x: int = 16
    overlap_y: int = 12
    levels: int = 4
    missing_fields: frozenset[tuple[int, int]] = frozenset()

    def __post_init__(self) -> None:
        top = 2 ** (self.levels - 1)
        if self.image_width % top or self.image_height % top:
            raise ValueError(
                f"image size {self.image_width}x{self.image_height} must be divisible by "
                f"2**(levels-1) = {top}"
            )
        field_w = self.divisions * self.image_width
        field_h = self.divisions * self.image_height
        if not (0 <= self.overlap_x < field_w and 0 <= self.overlap_y < field_h):
            raise ValueError("overlap must be smaller than a camera field")
        if len(self.missing_fields) >= self.fields_x * self.fields_y:
            raise ValueError("at least one camera field must be scanned")

    @property
    def images_x(self) -> int:
        return self.fields_x * self.divisions

    @property
    def images_y(self) -> int:
        return self.fields_y * self.divisions

    @property
    def canvas_size(self) -> tuple[int, int]:
        """Level-0 width and height as OpenSlide computes them (before bounds)."""
        width = self.images_x * self.image_width - (self.fields_x - 1) * self.overlap_x
        height = self.images_y * self.image_height - (self.fields_y - 1) * self.overlap_y
        return width, height

    def field_origin(self, xp: int, yp: int) -> tuple[int, int]:
        return (
            xp * (self.divisions * self.image_width - self.overlap_x),
            yp * (self.divisions * self.image_height - self.overlap_y),
        )

    def image_origin(self, x: int, y: int) -> tuple[int, int]:
        """Canvas position of level-0 image (x, y)."""
        fx, fy = self.field_origin(x // self.divisions, y // self.divisions)
        return (
            fx + (x % self.divisions) * self.image_width,
            fy + (y % self.divisions) * self.image_height,
        )

    def is_scanned(self, x: int, y: int) -> bool:
        return (x // self.divisions, y // self.divisions) not in self.missing_fields

    def scanned_fields(self) -> Iterator[tuple[int, int]]:
        for yp in range(self.fields_y):
            for xp in range(self.fields_x):
                if (xp, yp) not in self.missing_fields:
                    yield xp, yp

    def field_rects(self) -> list[tuple[int, int, int, int]]:
        """(x, y, width, height) of every scanned camera field on the canvas."""
        w = self.divisions * self.image_width
        h = self.divisions * self.image_height
        return [(*self.field_origin(xp, yp), w, h) for xp, yp in self.scanned_fields()]

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """The rectangle that OpenSlide reports as `openslide.bounds-*`."""
        rects = self.field_rects()
        x0 = min(r[0] for r in rects)
        y0 = min(r[1] for r in rects)
        x1 = max(r[0] + r[2] for r in rects)
        y1 = max(r[1] + r[3] for r in rects)
        return x0, y0, x1 - x0, y1 - y0


@dataclass(frozen=True)
class MiraxSlideSpec:
    """Everything that goes into one synthetic slide besides its pixels."""

    geometry: MiraxGeometry = field(default_factory=MiraxGeometry)
    image_format: ImageFormat = "JPEG"
    jpeg_quality: int = 92
    jpeg_subsampling: int = 0
    """PIL's code: 0 is 4:4:4, 1 is 4:2:2, 2 is 4:2:0."""
    mpp: float = 0.11
    objective_magnification: int = 40
    position_layer: PositionLayer = "vimslide"
    mirax_slide_id: str = "5e1f0d2c-4b7a-4f3e-9a51-2c8d7b6e1a90"
    slide_name: str = "BM 2019-0042 MUSTERMANN"
    """Real scanners write the slide id, a patient-like text or nothing here."""
    creation_datetime: datetime | None = datetime(2019, 3, 14, 9, 26, 53)
    """None: no SLIDE_CREATIONDATETIME key, as on some real slides."""
    scanning_time_seconds: int | None = 1385
    """SCANNING_TIME_IN_SEC (IDC's AcquisitionDuration); None: not written."""
    preview: PreviewExtent = "bounds"
    """What the MIRAX preview covers: the scanned bounds, the whole canvas, or no preview."""
    label_text: str = "MUSTERMANN, Max\n*01.02.2012\nBM 2019-0042"
    scanner_hardware_version: str = "Pannoramic 250 Flash III"
    scanner_software_version: str = "2.2.0.119029"
    scanner_hardware_id: str = "2A1B3C4D"
    fill_bgr: int = 0xFFFFFF
    max_datafile_bytes: int = 1 << 30


@dataclass(frozen=True)
class MiraxGroundTruth:
    """What the writer drew, in level-0 pixels of the whole MIRAX canvas."""

    spec: MiraxSlideSpec
    cells: SmearCells
    mrxs_path: Path

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return self.spec.geometry.bounds

    def region(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Exact uint8 RGB pixels of the canvas (what PNG mode stores)."""
        return to_uint8(render_region(self.cells, x, y, width, height))

    def scanned_mask(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """True where some scanned camera field covers the pixel."""
        mask = np.zeros((height, width), dtype=bool)
        for fx, fy, fw, fh in self.spec.geometry.field_rects():
            x0, y0 = max(fx, x), max(fy, y)
            x1, y1 = min(fx + fw, x + width), min(fy + fh, y + height)
            if x0 < x1 and y0 < y1:
                mask[y0 - y : y1 - y, x0 - x : x1 - x] = True
        return mask

    def nucleus_boxes(self) -> np.ndarray:
        """Nuclei boxes (x1, y1, x2, y2) of nucleated cells that lie inside a scanned field."""
        cells = self.cells
        boxes = cells.nucleus_boxes()[cells.nucleated]
        return boxes[self._inside_scanned(boxes)]

    def cell_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and lineage index of nucleated cells inside a scanned field."""
        cells = self.cells
        boxes = cells.cell_boxes()[cells.nucleated]
        lineage = cells.lineage[cells.nucleated]
        inside = self._inside_scanned(boxes)
        return boxes[inside], lineage[inside]

    def _inside_scanned(self, boxes: np.ndarray) -> np.ndarray:
        inside = np.zeros(len(boxes), dtype=bool)
        for fx, fy, fw, fh in self.spec.geometry.field_rects():
            inside |= (
                (boxes[:, 0] >= fx)
                & (boxes[:, 1] >= fy)
                & (boxes[:, 2] <= fx + fw)
                & (boxes[:, 3] <= fy + fh)
            )
        return inside


class _DataFiles:
    """Appends blobs to DataNNNN.dat files, rolling over before the int32 offset limit."""

    def __init__(self, folder: Path, slide_id: str, max_bytes: int) -> None:
        self._folder = folder
        self._slide_id = slide_id.encode("ascii")
        self._max_bytes = min(max_bytes, (1 << 31) - 1)
        self.names: list[str] = []
        self._handle: io.BufferedWriter | None = None
        self._size = 0

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        number = len(self.names)
        name = f"Data{number:04d}.dat"
        self.names.append(name)
        self._handle = open(self._folder / name, "wb")  # noqa: SIM115 - held across appends, closed in close()
        header = INDEX_VERSION + self._slide_id + f"{number:03d}".encode("ascii") + bytes(256)
        self._handle.write(header)
        self._size = len(header)

    def append(self, blob: bytes, new_file: bool = False) -> tuple[int, int, int]:
        """Write a blob; return (offset, length, fileno)."""
        if self._handle is None or new_file or self._size + len(blob) > self._max_bytes:
            self._open_next()
        assert self._handle is not None
        if self._size + len(blob) > self._max_bytes:
            # Not even a fresh file holds it: its offsets would pass the limit.
            raise ValueError(
                f"a {len(blob)}-byte image does not fit in a data file of at most "
                f"{self._max_bytes} bytes"
            )
        offset = self._size
        self._handle.write(blob)
        self._size += len(blob)
        return offset, len(blob), len(self.names) - 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _encode(
    pixels: np.ndarray, image_format: ImageFormat, quality: int, subsampling: int = 0
) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(to_uint8(pixels) if pixels.dtype != np.uint8 else pixels, "RGB")
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _downsample2(image: np.ndarray) -> np.ndarray:
    h, w, c = image.shape
    return image.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3), dtype=np.float32)


def _iter_pyramid_blocks(
    spec: MiraxSlideSpec, cells: SmearCells
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Yield (level, x, y, pixels) for every stored image, one top-level block at a time.

    A level-k image at level-0 index (x, y) holds the 2^k x 2^k level-0 images from (x, y),
    each downsampled by 2^k and placed edge to edge. Images with no scanned level-0 image
    under them are not stored; gaps inside a stored image take the fill colour.
    """
    g = spec.geometry
    w, h = g.image_width, g.image_height
    fill_bgr = spec.fill_bgr
    fill = np.array(
        [fill_bgr & 0xFF, (fill_bgr >> 8) & 0xFF, (fill_bgr >> 16) & 0xFF], dtype=np.float32
    )
    top = 2 ** (g.levels - 1)
    for by in range(0, g.images_y, top):
        for bx in range(0, g.images_x, top):
            current: dict[tuple[int, int], np.ndarray] = {}
            for y in range(by, min(by + top, g.images_y)):
                for x in range(bx, min(bx + top, g.images_x)):
                    if not g.is_scanned(x, y):
                        continue
                    ox, oy = g.image_origin(x, y)
                    pixels = to_uint8(render_region(cells, ox, oy, w, h))
                    current[(x, y)] = pixels
                    yield 0, x, y, pixels
            for level in range(1, g.levels):
                step = 2**level
                half = step // 2
                merged: dict[tuple[int, int], np.ndarray] = {}
                for y in range(by, by + top, step):
                    for x in range(bx, bx + top, step):
                        parts = [
                            (dx, dy, current.get((x + dx * half, y + dy * half)))
                            for dy in (0, 1)
                            for dx in (0, 1)
                        ]
                        if all(p is None for _, _, p in parts):
                            continue
                        out = np.empty((h, w, 3), dtype=np.float32)
                        out[:] = fill
                        for dx, dy, part in parts:
                            if part is not None:
                                out[
                                    dy * h // 2 : (dy + 1) * h // 2,
                                    dx * w // 2 : (dx + 1) * w // 2,
                                ] = _downsample2(part.astype(np.float32))
                        merged[(x, y)] = out
                        yield level, x, y, out
                current = merged


def _label_image(text: str) -> np.ndarray:
    image = Image.new("RGB", (300, 300), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.multiline_text((12, 40), text, fill=(10, 10, 10), spacing=12)
    draw.rectangle((12, 200, 288, 270), outline=(0, 0, 0), width=3)
    for i in range(20):
        draw.line((20 + 13 * i, 205, 20 + 13 * i, 265), fill=(0, 0, 0), width=2 + i % 3)
    return np.asarray(image)


def _macro_image(spec: MiraxSlideSpec, cells: SmearCells) -> np.ndarray:
    """Overview of the glass slide without the label area, so the overview carries no PHI."""
    canvas_w, canvas_h = spec.geometry.canvas_size
    scale = max(canvas_w / 560, canvas_h / 300, 1.0)
    smear = to_uint8(
        render_region(cells, 0, 0, int(canvas_w / scale), int(canvas_h / scale), scale)
    )
    macro = np.full((340, 900, 3), 200, dtype=np.uint8)
    macro[20 : 20 + smear.shape[0], 300 : 300 + smear.shape[1]] = smear
    return macro


def _preview_image(spec: MiraxSlideSpec, cells: SmearCells) -> np.ndarray:
    """The preview over the bounds (which wsidicomizer's THUMBNAIL assumes) or over the
    whole canvas (which it does not)."""
    if spec.preview == "canvas":
        bx, by = 0, 0
        bw, bh = spec.geometry.canvas_size
    else:
        bx, by, bw, bh = spec.geometry.bounds
    scale = max(bw / 512, bh / 512, 1.0)
    return to_uint8(render_region(cells, bx, by, int(bw / scale), int(bh / scale), scale))


def _position_buffer(geometry: MiraxGeometry) -> bytes:
    records = bytearray()
    for yp in range(geometry.fields_y):
        for xp in range(geometry.fields_x):
            x, y = geometry.field_origin(xp, yp)
            scanned = (xp, yp) not in geometry.missing_fields
            records += POSITION_RECORD.pack(1 if scanned else 0, x, y)
    return bytes(records)


def _slidedat(
    spec: MiraxSlideSpec,
    datafiles: list[str],
    nonhier: list[tuple[str, list[tuple[str, str, dict[str, str]]]]],
) -> str:
    g = spec.geometry
    lines: list[str] = ["[GENERAL]"]
    general = {
        "SLIDE_VERSION": "01.02",
        "SLIDE_ID": spec.mirax_slide_id,
        "SLIDE_NAME": spec.slide_name,
        "IMAGENUMBER_X": str(g.images_x),
        "IMAGENUMBER_Y": str(g.images_y),
        "CameraImageDivisionsPerSide": str(g.divisions),
        "OBJECTIVE_MAGNIFICATION": str(spec.objective_magnification),
        "OBJECTIVE_NAME": f"Plan-Apochromat {spec.objective_magnification}x",
        "SCANNER_HARDWARE_VERSION": spec.scanner_hardware_version,
        "SCANNER_SOFTWARE_VERSION": spec.scanner_software_version,
        "SCANNER_HARDWARE_ID": spec.scanner_hardware_id,
    }
    if spec.scanning_time_seconds is not None:
        general["SCANNING_TIME_IN_SEC"] = str(spec.scanning_time_seconds)
    if spec.creation_datetime is not None:
        general["SLIDE_CREATIONDATETIME"] = spec.creation_datetime.strftime("%d/%m/%Y %H:%M:%S")
    lines += [f"{k} = {v}" for k, v in general.items()]
    lines += ["", "[HIERARCHICAL]", "HIER_COUNT = 1", f"NONHIER_COUNT = {len(nonhier)}"]
    lines += [
        "INDEXFILE = Index.dat",
        "HIER_0_NAME = Slide zoom level",
        f"HIER_0_COUNT = {g.levels}",
    ]
    lines += [f"HIER_0_VAL_{i} = ZoomLevel_{i}" for i in range(g.levels)]
    lines += [f"HIER_0_VAL_{i}_SECTION = LAYER_0_LEVEL_{i}_SECTION" for i in range(g.levels)]
    sections: list[tuple[str, dict[str, str]]] = []
    for i, (name, values) in enumerate(nonhier):
        lines += [f"NONHIER_{i}_NAME = {name}", f"NONHIER_{i}_COUNT = {len(values)}"]
        for j, (value, section, keys) in enumerate(values):
            lines += [f"NONHIER_{i}_VAL_{j} = {value}", f"NONHIER_{i}_VAL_{j}_SECTION = {section}"]
            sections.append((section, keys))
    lines += ["", "[DATAFILE]", f"FILE_COUNT = {len(datafiles)}"]
    lines += [f"FILE_{i} = {name}" for i, name in enumerate(datafiles)]
    for level in range(g.levels):
        lines += [
            "",
            f"[LAYER_0_LEVEL_{level}_SECTION]",
            f"IMAGE_FORMAT = {spec.image_format}",
            f"IMAGE_CONCAT_FACTOR = {0 if level == 0 else 1}",
            f"OVERLAP_X = {g.overlap_x if level == 0 else 0}",
            f"OVERLAP_Y = {g.overlap_y if level == 0 else 0}",
            f"MICROMETER_PER_PIXEL_X = {spec.mpp * 2**level}",
            f"MICROMETER_PER_PIXEL_Y = {spec.mpp * 2**level}",
            f"IMAGE_FILL_COLOR_BGR = {spec.fill_bgr}",
            f"DIGITIZER_WIDTH = {g.image_width}",
            f"DIGITIZER_HEIGHT = {g.image_height}",
        ]
    for section, keys in sections:
        lines += ["", f"[{section}]"] + [f"{k} = {v}" for k, v in keys.items()]
    return "\r\n".join(lines) + "\r\n"


def _index_dat(
    slide_id: str,
    hier: list[list[tuple[int, int, int, int]]],
    nonhier: list[tuple[int, int, int]],
) -> bytes:
    """Build Index.dat: version, SLIDE_ID, two table pointers, list heads and pages."""
    head = INDEX_VERSION + slide_id.encode("ascii")
    body = bytearray(head)
    body += bytes(8)  # hier root pointer, nonhier root pointer
    hier_table = len(body)
    body += bytes(4 * len(hier))
    nonhier_table = len(body)
    body += bytes(4 * len(nonhier))
    struct.pack_into("<ii", body, len(head), hier_table, nonhier_table)

    def list_head(page_at: int) -> int:
        at = len(body)
        body.extend(struct.pack("<ii", 0, page_at))
        return at

    for i, records in enumerate(hier):
        page = len(body) + 8
        at = list_head(page)
        struct.pack_into("<i", body, hier_table + 4 * i, at)
        body.extend(struct.pack("<ii", len(records), 0))
        for record in records:
            body.extend(HIER_RECORD.pack(*record))
    for i, (offset, length, fileno) in enumerate(nonhier):
        page = len(body) + 8
        at = list_head(page)
        struct.pack_into("<i", body, nonhier_table + 4 * i, at)
        body.extend(NONHIER_PAGE.pack(1, 0, 0, 0, offset, length, fileno))
    return bytes(body)


def write_mirax(mrxs_path: Path, spec: MiraxSlideSpec, cells: SmearCells) -> MiraxGroundTruth:
    """Write `<stem>.mrxs` and its `<stem>/` folder; return the ground truth."""
    images = (
        (level, x, y, _encode(pixels, spec.image_format, spec.jpeg_quality, spec.jpeg_subsampling))
        for level, x, y, pixels in _iter_pyramid_blocks(spec, cells)
    )
    preview = _preview_image(spec, cells) if spec.preview != "none" else None
    write_mirax_images(mrxs_path, spec, images, _macro_image(spec, cells), preview)
    return MiraxGroundTruth(spec=spec, cells=cells, mrxs_path=Path(mrxs_path))


def write_mirax_images(
    mrxs_path: Path,
    spec: MiraxSlideSpec,
    images: Iterable[tuple[int, int, int, bytes]],
    macro: np.ndarray,
    preview: np.ndarray | None,
) -> None:
    """Write the slide from its encoded images `(level, x, y, bytes)` (x, y: level-0 image
    index), the macro image and the preview (used unless `spec.preview` is "none")."""
    mrxs_path = Path(mrxs_path)
    folder = mrxs_path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=False)
    g = spec.geometry
    files = _DataFiles(folder, spec.mirax_slide_id, spec.max_datafile_bytes)
    hier: list[list[tuple[int, int, int, int]]] = [[] for _ in range(g.levels)]
    try:
        for level, x, y, blob in images:
            offset, length, fileno = files.append(blob)
            hier[level].append((y * g.images_x + x, offset, length, fileno))
        # Associated images and the position buffer go to a data file of their own.
        macro_record = files.append(_encode(macro, "JPEG", 90), new_file=True)
        label = files.append(_encode(_label_image(spec.label_text), "JPEG", 90))
        nonhier_records = [macro_record, label]
        scan_data = [
            (
                "ScanDataLayer_SlideThumbnail",
                "NONHIER_0_VAL_0_SECTION",
                {"THUMBNAIL_IMAGE_TYPE": "JPEG"},
            ),
            (
                "ScanDataLayer_SlideBarcode",
                "NONHIER_0_VAL_1_SECTION",
                {"BARCODE_IMAGE_TYPE": "JPEG"},
            ),
        ]
        if spec.preview != "none" and preview is not None:
            nonhier_records.append(files.append(_encode(preview, "JPEG", 90)))
            scan_data.append(
                (
                    "ScanDataLayer_SlidePreview",
                    "NONHIER_0_VAL_2_SECTION",
                    {"PREVIEW_IMAGE_TYPE": "JPEG"},
                )
            )
        nonhier_layers: list[tuple[str, list[tuple[str, str, dict[str, str]]]]] = [
            ("Scan data layer", scan_data)
        ]
        positions = _position_buffer(g)
        if spec.position_layer == "vimslide":
            nonhier_records.append(files.append(positions))
            nonhier_layers.append(
                ("VIMSLIDE_POSITION_BUFFER", [("default", "NONHIER_1_VAL_0_SECTION", {})])
            )
        elif spec.position_layer == "stitching":
            nonhier_records.append(files.append(zlib.compress(positions)))
            nonhier_layers.append(
                (
                    "StitchingIntensityLayer",
                    [("StitchingIntensityLevel", "NONHIER_1_VAL_0_SECTION", {})],
                )
            )
    finally:
        files.close()
    (folder / "Index.dat").write_bytes(_index_dat(spec.mirax_slide_id, hier, nonhier_records))
    (folder / SLIDEDAT).write_bytes(
        b"\xef\xbb\xbf" + _slidedat(spec, files.names, nonhier_layers).encode("utf-8")
    )
    mrxs_path.write_bytes(b"3DHISTECH MIRAX slide (synthetic, bms-pipeline)\n")


def background_rgb() -> tuple[int, int, int]:
    r, g_, b = (int(v) for v in BACKGROUND_RGB)
    return r, g_, b
