"""Real-size synthetic slides in minutes: every stored image comes from a small bank.

A full BMDeep slide (about 190,000 x 450,000 px) holds some 450,000 level-0 camera images;
rendering and encoding each one takes hours. Here a bank of `bank_size` rendered smear
images is encoded once per pyramid level and reused, so writing costs little more than the
disk writes, and the pixels stay exact:

- level 0: image (x, y) is bank image `key0(x, y)`;
- level k >= 1: the bank holds `bank_size` groups, each four level-(k-1) bank entries
  (one per quadrant); a top-level image picks its group from the seed and its position,
  and the groups below follow, so every complete level-k image is the exact 2^k box filter
  of the level-0 images under it (as `mirax_writer` builds them) and its bytes are shared.

Images next to unscanned fields (partly filled) are composed from their children and
encoded one by one, as `mirax_writer` does. Camera noise and the scanner's JPEG quality
default to values that give about the bytes per pixel of real BMDeep slides (13.8 GB of
DICOM for 85 gigapixels), so files reach the sizes real slides reach.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from bms_pipeline.core.synthetic.mirax_writer import (
    MiraxGeometry,
    MiraxSlideSpec,
    write_mirax_images,
)
from bms_pipeline.core.synthetic.smear_content import render_region, scatter_cells, to_uint8

BANK_SIZE = 16
CAMERA_NOISE = 8.0
"""Grey-level standard deviation of the noise added to the bank images (see module doc)."""
ANNOTATED_FIELDS = 1000
"""At most this many camera fields, spread over the slide, carry annotated cells."""


@dataclass(frozen=True)
class BankedSlide:
    """The bank and the per-position choices of one banked slide."""

    geometry: MiraxGeometry
    seed: int = 0
    bank_size: int = BANK_SIZE
    noise: float = CAMERA_NOISE
    level0: tuple[np.ndarray, ...] = field(default=(), repr=False)  # uint8 (h, w, 3)
    groups: tuple[np.ndarray, ...] = field(default=(), repr=False)  # level k: (bank, 4) int
    top: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64), repr=False)
    cells: tuple[np.ndarray, ...] = field(default=(), repr=False)
    """Per bank image: (n, 9) x1, y1, x2, y2 of the cell, lineage, nucleus x1, y1, x2, y2,
    in the image's own pixels, nucleated cells wholly inside the image only."""

    @classmethod
    def make(
        cls,
        geometry: MiraxGeometry,
        seed: int = 0,
        bank_size: int = BANK_SIZE,
        noise: float = CAMERA_NOISE,
    ) -> BankedSlide:
        rng = np.random.default_rng([seed, 7])
        w, h = geometry.image_width, geometry.image_height
        smear = scatter_cells(rng, bank_size * w, h)
        level0: list[np.ndarray] = []
        cells: list[np.ndarray] = []
        nuclei = smear.nucleus_boxes()
        boxes = smear.cell_boxes()
        for i in range(bank_size):
            pixels = render_region(smear, i * w, 0, w, h)
            if noise > 0:
                pixels += rng.normal(0.0, noise, pixels.shape).astype(np.float32)
            level0.append(to_uint8(pixels))
            inside = (
                smear.nucleated
                & (boxes[:, 0] >= i * w)
                & (boxes[:, 2] <= (i + 1) * w)
                & (boxes[:, 1] >= 0)
                & (boxes[:, 3] <= h)
            )
            shift = np.array([i * w, 0, i * w, 0], dtype=np.float64)
            cells.append(
                np.column_stack(
                    [
                        boxes[inside] - shift,
                        smear.lineage[inside].astype(np.float64),
                        nuclei[inside] - shift,
                    ]
                )
            )
        top_level = geometry.levels - 1
        groups = [np.zeros((0, 4), np.int64)] + [
            rng.integers(0, bank_size, size=(bank_size, 4)) for _ in range(top_level)
        ]
        span = 2**top_level
        blocks = (-(-geometry.images_y // span), -(-geometry.images_x // span))
        top = rng.integers(0, bank_size, size=blocks)
        return cls(
            geometry, seed, bank_size, noise, tuple(level0), tuple(groups), top, tuple(cells)
        )

    def key(self, level: int, x: int, y: int) -> int:
        """Bank entry of the level-`level` image at level-0 image index (x, y)."""
        top_level = self.geometry.levels - 1
        k = int(self.top[y >> top_level, x >> top_level])
        for lv in range(top_level, level, -1):
            quadrant = ((y >> (lv - 1)) & 1) * 2 + ((x >> (lv - 1)) & 1)
            k = int(self.groups[lv][k, quadrant])
        return k

    def image(self, x: int, y: int) -> np.ndarray:
        """The stored level-0 image (x, y), uint8 RGB (what PNG mode would store)."""
        return self.level0[self.key(0, x, y)]

    def region(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Canvas pixels of a level-0 region and where they are unambiguous: covered by one
        scanned image only (overlaps between camera fields hold two different images)."""
        g = self.geometry
        out = np.zeros((height, width, 3), dtype=np.uint8)
        count = np.zeros((height, width), dtype=np.int32)
        for y in range(g.images_y):
            for x in range(g.images_x):
                ox, oy = g.image_origin(x, y)
                if ox >= x0 + width or oy >= y0 + height:
                    continue
                if ox + g.image_width <= x0 or oy + g.image_height <= y0:
                    continue
                if not g.is_scanned(x, y):
                    continue
                ax, ay = max(ox, x0), max(oy, y0)
                bx = min(ox + g.image_width, x0 + width)
                by = min(oy + g.image_height, y0 + height)
                out[ay - y0 : by - y0, ax - x0 : bx - x0] = self.image(x, y)[
                    ay - oy : by - oy, ax - ox : bx - ox
                ]
                count[ay - y0 : by - y0, ax - x0 : bx - x0] += 1
        return out, count == 1

    def annotated_cells(
        self, max_fields: int = ANNOTATED_FIELDS
    ) -> tuple[list[tuple[int, int, int, int]], np.ndarray, np.ndarray, np.ndarray]:
        """(field rects, cell boxes, lineage, nucleus boxes) in canvas pixels: the sampled
        fields (x, y, w, h) and the nucleated cells in
        up to `max_fields` scanned fields spread over the slide, each cell clear of the
        overlap with the neighbouring fields (so the stored pixels show it)."""
        g = self.geometry
        fields = list(g.scanned_fields())
        step = max(1, -(-len(fields) // max_fields))
        margin_x, margin_y = g.overlap_x, g.overlap_y
        field_w, field_h = g.divisions * g.image_width, g.divisions * g.image_height
        parts: list[np.ndarray] = []
        rects: list[tuple[int, int, int, int]] = []
        for xp, yp in fields[::step]:
            fx, fy = g.field_origin(xp, yp)
            rects.append((fx, fy, field_w, field_h))
            for dy in range(g.divisions):
                for dx in range(g.divisions):
                    x, y = xp * g.divisions + dx, yp * g.divisions + dy
                    ox, oy = g.image_origin(x, y)
                    cells = self.cells[self.key(0, x, y)]
                    shift = np.array([ox, oy, ox, oy], dtype=np.float64)
                    boxes = cells[:, 0:4] + shift
                    keep = (
                        (boxes[:, 0] >= fx + margin_x)
                        & (boxes[:, 1] >= fy + margin_y)
                        & (boxes[:, 2] <= fx + field_w - margin_x)
                        & (boxes[:, 3] <= fy + field_h - margin_y)
                    )
                    parts.append(
                        np.column_stack([boxes[keep], cells[keep, 4], cells[keep, 5:9] + shift])
                    )
        table = np.concatenate(parts) if parts else np.zeros((0, 9))
        return rects, table[:, 0:4], table[:, 4].astype(np.int64), table[:, 5:9]


def _encode(pixels: np.ndarray, quality: int, subsampling: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(pixels) if pixels.dtype != np.uint8 else pixels, "RGB").save(
        buffer, "JPEG", quality=quality, subsampling=subsampling
    )
    return buffer.getvalue()


def _downsample2(image: np.ndarray) -> np.ndarray:
    """The 2 x 2 box filter (slices, not `mean` over strided axes: 20x faster)."""
    a = image.astype(np.float32, copy=False)
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * np.float32(0.25)


class Bank:
    """Pixels (level 0 uint8, higher levels float32 as `mirax_writer` keeps them) and
    encoded bytes of every bank entry at every level."""

    def __init__(self, slide: BankedSlide, spec: MiraxSlideSpec) -> None:
        g = slide.geometry
        self.fill = np.array(
            [spec.fill_bgr & 0xFF, (spec.fill_bgr >> 8) & 0xFF, (spec.fill_bgr >> 16) & 0xFF],
            dtype=np.float32,
        )
        self.pixels: list[list[np.ndarray]] = [list(slide.level0)]
        for level in range(1, g.levels):
            self.pixels.append(
                [
                    self.compose([self.pixels[level - 1][int(c)] for c in children], g)
                    for children in slide.groups[level]
                ]
            )
        self.bytes = [
            [_encode(p, spec.jpeg_quality, spec.jpeg_subsampling) for p in level]
            for level in self.pixels
        ]

    def compose(self, parts: list[np.ndarray | None], g: MiraxGeometry) -> np.ndarray:
        """One level up from four quadrant images (None: unscanned, the fill colour)."""
        w, h = g.image_width, g.image_height
        out = np.empty((h, w, 3), dtype=np.float32)
        out[:] = self.fill
        for quadrant, part in enumerate(parts):
            if part is None:
                continue
            dx, dy = quadrant % 2, quadrant // 2
            out[dy * h // 2 : (dy + 1) * h // 2, dx * w // 2 : (dx + 1) * w // 2] = _downsample2(
                part.astype(np.float32)
            )
        return out


def _scanned_images(g: MiraxGeometry) -> np.ndarray:
    fields = np.ones((g.fields_y, g.fields_x), dtype=bool)
    for xp, yp in g.missing_fields:
        fields[yp, xp] = False
    return np.repeat(np.repeat(fields, g.divisions, axis=0), g.divisions, axis=1)


def _coverage(scanned: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Per level-`level` image: any and all of the level-0 images under it scanned."""
    step = 2**level
    h, w = scanned.shape
    padded = np.zeros((-(-h // step) * step, -(-w // step) * step), dtype=bool)
    padded[:h, :w] = scanned
    blocks = padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step)
    return blocks.any(axis=(1, 3)), blocks.all(axis=(1, 3))


def _iter_banked_images(
    slide: BankedSlide, spec: MiraxSlideSpec, bank: Bank
) -> Iterator[tuple[int, int, int, bytes]]:
    """(level, x, y, encoded bytes) in `mirax_writer`'s order: top-level block by block,
    level 0 first. Complete images share the bank's bytes; partly scanned ones are composed."""
    g = slide.geometry
    scanned = _scanned_images(g)
    coverage = [_coverage(scanned, level) for level in range(g.levels)]
    top = 2 ** (g.levels - 1)
    for by in range(0, g.images_y, top):
        for bx in range(0, g.images_x, top):
            partial: dict[tuple[int, int], np.ndarray] = {}
            for level in range(g.levels):
                step = 2**level
                any_, all_ = coverage[level]
                for y in range(by, min(by + top, g.images_y), step):
                    for x in range(bx, min(bx + top, g.images_x), step):
                        if not any_[y // step, x // step]:
                            continue
                        if all_[y // step, x // step]:
                            yield level, x, y, bank.bytes[level][slide.key(level, x, y)]
                            continue
                        half = step // 2
                        parts: list[np.ndarray | None] = []
                        for quadrant in range(4):
                            cx = x + (quadrant % 2) * half
                            cy = y + (quadrant // 2) * half
                            if cx >= g.images_x or cy >= g.images_y:
                                parts.append(None)
                                continue
                            c_any, c_all = coverage[level - 1]
                            if not c_any[cy // half, cx // half]:
                                parts.append(None)
                            elif c_all[cy // half, cx // half]:
                                parts.append(bank.pixels[level - 1][slide.key(level - 1, cx, cy)])
                            else:
                                parts.append(partial.pop((cx, cy)))
                        pixels = bank.compose(parts, g)
                        if level < g.levels - 1:
                            partial[(x, y)] = pixels
                        yield (
                            level,
                            x,
                            y,
                            _encode(pixels, spec.jpeg_quality, spec.jpeg_subsampling),
                        )


def estimated_bytes(slide: BankedSlide, bank: Bank) -> int:
    """What the slide will take on disk: stored images per level times the bank's mean size
    at that level (partly filled images compress better), plus the small files."""
    scanned = _scanned_images(slide.geometry)
    total = 0
    for level in range(slide.geometry.levels):
        stored = int(_coverage(scanned, level)[0].sum())
        total += stored * int(np.mean([len(b) for b in bank.bytes[level]]))
    return total + (4 << 20)


class NotEnoughDiskError(OSError):
    """The slide would not fit on the disk (checked before writing anything)."""


def write_banked_mirax(
    mrxs_path: Path, spec: MiraxSlideSpec, slide: BankedSlide, bank: Bank | None = None
) -> int:
    """Write the slide (`<stem>.mrxs` and `<stem>/`) after checking the free disk; return
    the bytes written. Raises NotEnoughDiskError saying how much is needed and free.
    `bank`: `Bank(slide, spec)`, if already made."""
    bank = bank or Bank(slide, spec)
    need = estimated_bytes(slide, bank)
    parent = Path(mrxs_path).parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if need * 1.05 + (1 << 30) > free:
        raise NotEnoughDiskError(
            f"{mrxs_path.name}: the slide needs about {need / 1e9:.1f} GB plus 1 GB of "
            f"headroom; {free / 1e9:.1f} GB are free on {parent}"
        )
    spec = replace(spec, geometry=slide.geometry)
    overview = _overview(slide, bank)
    write_mirax_images(
        mrxs_path,
        spec,
        _iter_banked_images(slide, spec, bank),
        _macro(overview),
        _preview(spec, overview, 2 ** (slide.geometry.levels - 1)),
    )
    folder = Path(mrxs_path).with_suffix("")
    return sum(f.stat().st_size for f in folder.iterdir())


def _overview(slide: BankedSlide, bank: Bank) -> np.ndarray:
    """The whole canvas at the top level's scale, each top-level image at its level-0 place
    (for the macro and preview images: they show what the pyramid shows)."""
    g = slide.geometry
    top_level = g.levels - 1
    scale = 2**top_level
    cw, ch = g.canvas_size
    canvas = np.empty((-(-ch // scale), -(-cw // scale), 3), dtype=np.uint8)
    canvas[:] = to_uint8(bank.fill)
    any_, all_ = _coverage(_scanned_images(g), top_level)
    for ty in range(any_.shape[0]):
        for tx in range(any_.shape[1]):
            if not all_[ty, tx]:
                continue  # partial blocks keep the fill (edges and holes: a few pixels)
            ox, oy = g.image_origin(tx * scale, ty * scale)
            image = to_uint8(bank.pixels[top_level][slide.key(top_level, tx * scale, ty * scale)])
            x0, y0 = ox // scale, oy // scale
            h = min(image.shape[0], canvas.shape[0] - y0)
            w = min(image.shape[1], canvas.shape[1] - x0)
            canvas[y0 : y0 + h, x0 : x0 + w] = image[:h, :w]
    return canvas


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    scale = max(image.shape[1] / width, image.shape[0] / height, 1.0)
    size = (max(1, int(image.shape[1] / scale)), max(1, int(image.shape[0] / scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _macro(overview: np.ndarray) -> np.ndarray:
    """As `mirax_writer._macro_image`: the smear right of the (blank) label area."""
    smear = _fit(overview, 560, 300)
    macro = np.full((340, 900, 3), 200, dtype=np.uint8)
    macro[20 : 20 + smear.shape[0], 300 : 300 + smear.shape[1]] = smear
    return macro


def _preview(spec: MiraxSlideSpec, overview: np.ndarray, scale: int) -> np.ndarray | None:
    if spec.preview == "none":
        return None
    if spec.preview == "canvas":
        return _fit(overview, 512, 512)
    bx, by, bw, bh = spec.geometry.bounds
    crop = overview[by // scale : (by + bh) // scale, bx // scale : (bx + bw) // scale]
    return _fit(np.ascontiguousarray(crop), 512, 512)
