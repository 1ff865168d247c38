"""The faster compositing is bit-identical to wsidicomizer's, tile and slide."""

from __future__ import annotations

import ctypes
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import openslide
import pydicom
import pytest
from wsidicom import WsiDicom
from wsidicomizer.extras.openslide.openslide_image_data import OpenSlideLevelImageData

from bms_pipeline.core.dicom.convert import ConversionSettings
from bms_pipeline.core.dicom.fast_source import (
    FastOpenSlideLevelImageData,
    composite_over_background,
)
from bms_pipeline.core.mirax.direct import MiraxDirectReader
from bms_pipeline.core.synthetic.mirax_writer import MiraxGeometry
from bms_pipeline_tests.conftest import convert_test_slide
from bms_pipeline_tests.helpers import write_test_slide


def _wsidicomizer_composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """wsidicomizer 0.31's formula, written out as the reference."""
    alpha = rgba[..., 3:4].astype(np.int32)
    rgb = rgba[..., :3].astype(np.int32)
    return ((rgb * alpha + np.asarray(background, np.int32) * (255 - alpha) + 127) // 255).astype(
        np.uint8
    )


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (12, 200, 77)])
def test_composite_is_bit_exact_for_every_alpha(background: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (256, 256, 4), dtype=np.uint8)
    rgba[0, :256, 3] = np.arange(256)  # every alpha value at least once
    expected = _wsidicomizer_composite(rgba, background)
    np.testing.assert_array_equal(composite_over_background(rgba, background), expected)
    rgba[..., 3] = 255
    np.testing.assert_array_equal(composite_over_background(rgba, background), rgba[..., :3])


def test_fast_and_stock_sources_write_identical_pixels(tmp_path: Path) -> None:
    """Opaque tiles take the direct BGRA encode, edge tiles the compositing: both must
    give wsidicomizer's bytes."""
    geometry = MiraxGeometry(
        image_width=256,
        image_height=192,
        fields_x=5,
        fields_y=5,
        divisions=2,
        overlap_x=16,
        overlap_y=12,
        levels=3,
        missing_fields=frozenset({(0, 0), (3, 3)}),
    )
    truth = write_test_slide(tmp_path / "raw", geometry=geometry, image_format="PNG")
    with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
        bx, by = truth.bounds[:2]
        tile = np.asarray(slide.read_region((bx, by + 512), 0, (512, 512)))  # DICOM tile (0, 1)
        assert tile[..., 3].min() == 255, "the test needs an opaque tile"
    # Without THUMBNAIL: the stock source copies the MIRAX preview, ours renders the pyramid.
    fast = convert_test_slide(
        truth, tmp_path / "fast", settings=ConversionSettings(include_thumbnail=False)
    )
    stock = convert_test_slide(
        truth,
        tmp_path / "stock",
        settings=ConversionSettings(fast_composite=False, include_thumbnail=False),
    )
    assert [p.name for p in fast.files] == [p.name for p in stock.files]
    for a, b in zip(fast.files, stock.files, strict=True):
        assert pydicom.dcmread(a).PixelData == pydicom.dcmread(b).PixelData, a.name
    with WsiDicom.open(fast.sm_dir) as wsi:
        assert wsi.size.width == truth.bounds[2]


def test_direct_mirax_reads_write_the_same_pixels_as_openslide_reads(tmp_path: Path) -> None:
    """JPEG camera images, so overlapping fields differ by compression artifacts: the
    direct reader must paint them in OpenSlide's order to give the same tiles."""
    geometry = MiraxGeometry(
        image_width=256,
        image_height=192,
        fields_x=5,
        fields_y=4,
        divisions=2,
        overlap_x=16,
        overlap_y=12,
        levels=3,
        missing_fields=frozenset({(1, 1)}),
    )
    truth = write_test_slide(tmp_path / "raw", geometry=geometry, image_format="JPEG")
    with MiraxDirectReader.open(truth.mrxs_path) as reader:
        assert all(reader.supports_level(level) for level in range(3)), (
            "the test needs every level read directly"
        )
    direct = convert_test_slide(truth, tmp_path / "direct", settings=ConversionSettings())
    via_openslide = convert_test_slide(
        truth, tmp_path / "openslide", settings=ConversionSettings(direct_mirax=False)
    )
    assert [p.name for p in direct.files] == [p.name for p in via_openslide.files]
    for a, b in zip(direct.files, via_openslide.files, strict=True):
        assert pydicom.dcmread(a).PixelData == pydicom.dcmread(b).PixelData, a.name
    # Every level direct: OpenSlide's tile map was dropped while writing, never reopened
    # (the THUMBNAIL and the overview were read before the first tile).
    assert direct.openslide_handle == {
        "released_while_writing": True,
        "reopened": 0,
        "tiles_read_ahead": 0,
    }
    assert via_openslide.openslide_handle == {
        "released_while_writing": False,
        "reopened": 0,
        "tiles_read_ahead": 0,
    }


def test_openslide_is_released_once_the_levels_read_through_it_are_written(
    tmp_path: Path,
) -> None:
    """Levels 2 and 3 here are read through OpenSlide (their images sit at fractional
    positions), 0 and 1 directly; levels 0 and 2 are written, as IDC keeps every second
    level: the handle goes once level 2's tiles are all read (level 3, never read, does not
    hold it), and the pixels are OpenSlide's throughout."""
    geometry = MiraxGeometry(
        image_width=256,
        image_height=192,
        fields_x=5,
        fields_y=4,
        divisions=2,
        overlap_x=10,
        overlap_y=6,
        levels=4,
    )
    truth = write_test_slide(tmp_path / "raw", geometry=geometry, image_format="JPEG")
    with MiraxDirectReader.open(truth.mrxs_path) as reader:
        served = [reader.supports_level(level) for level in range(4)]
    assert served == [True, True, False, False], "the test needs levels 2-3 through OpenSlide"
    settings = ConversionSettings(tile_size=128, include_levels=(0, 2))
    mixed = convert_test_slide(truth, tmp_path / "mixed", settings=settings)
    via_openslide = convert_test_slide(
        truth, tmp_path / "openslide", settings=replace(settings, direct_mirax=False)
    )
    assert [(r.level, r.reader) for r in mixed.readers] == [(0, "direct"), (2, "openslide")]
    (level2,) = [r for r in mixed.readers if r.level == 2]
    tiles = math.ceil(level2.width / 128) * math.ceil(level2.height / 128)
    assert mixed.openslide_handle == {
        "released_while_writing": True,
        "reopened": 0,
        # Level 2's tiles, encoded before the writing began (then served once each).
        "tiles_read_ahead": tiles,
    }
    assert level2.openslide_reads == tiles, "no tile read twice"
    assert len(mixed.files) == len(via_openslide.files) >= 2
    for a, b in zip(mixed.files, via_openslide.files, strict=True):
        assert pydicom.dcmread(a).PixelData == pydicom.dcmread(b).PixelData, a.name


@pytest.mark.parametrize("blank_color", [(255, 255, 255), (250, 240, 230), 245])
def test_blank_detection_agrees_with_wsidicomizer(blank_color: tuple[int, int, int] | int) -> None:
    """The fused check on BGRA words must call exactly the tiles blank that wsidicomizer's
    `_detect_blank_tile` does (both run on the same premultiplied BGRA buffer).

    Both are called unbound with an object that only carries `blank_color`: building a
    level image data needs an open slide, and these methods read nothing else."""
    holder = SimpleNamespace(blank_color=blank_color)
    rgb = (blank_color,) * 3 if isinstance(blank_color, int) else blank_color
    rng = np.random.default_rng(0)
    tiles = []
    transparent = np.zeros((64, 48, 4), np.uint8)
    tiles.append(transparent)
    background = np.empty((64, 48, 4), np.uint8)
    background[..., :3] = rgb
    background[..., 3] = 255
    tiles.append(background)
    swapped = background.copy()
    swapped[..., :3] = rgb[::-1]  # the other byte order: blank only if the colour is grey
    tiles.append(swapped)
    for y, x in [(0, 0), (30, 20), (63, 47)]:
        dot = background.copy()
        dot[y, x, 1] ^= 1
        tiles.append(dot)
        hole = transparent.copy()
        hole[y, x] = 255
        tiles.append(hole)
    translucent = background.copy()
    translucent[..., 3] = 128
    tiles.append(translucent)
    tiles += [rng.integers(0, 256, (64, 48, 4), dtype=np.uint8) for _ in range(3)]
    verdicts = []
    for tile in tiles:
        expected = OpenSlideLevelImageData._detect_blank_tile(holder, tile)  # type: ignore[arg-type]
        pixels = np.ascontiguousarray(tile).view(np.uint32)[..., 0]
        assert FastOpenSlideLevelImageData._is_blank(holder, pixels) == expected  # type: ignore[arg-type]
        verdicts.append(expected)
    assert True in verdicts and False in verdicts


@pytest.mark.parametrize("blank_color", [(255, 255, 255), (250, 240, 230)])
def test_transparent_fill_encodes_as_wsidicomizers_compositing(
    blank_color: tuple[int, int, int],
) -> None:
    """A tile of opaque and transparent pixels, filled in place and encoded from BGRA, gives
    the bytes of wsidicomizer's path (ARGB->RGBA, composite, RGB encode); one partly
    transparent pixel sends the tile back to that path untouched."""
    from imagecodecs import JPEG8, jpeg8_encode
    from wsidicom.codec import Encoder, JpegSettings
    from wsidicomizer.extras.openslide.openslide import convert_argb_to_rgba

    holder = SimpleNamespace(blank_color=blank_color)
    rng = np.random.default_rng(3)
    bgra = rng.integers(0, 256, (256, 256, 4), dtype=np.uint8)
    bgra[..., 3] = 255
    bgra[:, :70] = 0  # an unscanned field edge
    bgra[200:230, 100:140] = 0  # a hole
    reference = bgra.copy()
    convert_argb_to_rgba(reference.view(ctypes.c_uint32))  # pyright: ignore[reportArgumentType]
    encoder = Encoder.create_for_settings(JpegSettings(quality=80))
    expected = encoder.encode(composite_over_background(reference, blank_color))

    pixels = bgra.view(np.uint32)[..., 0]
    assert FastOpenSlideLevelImageData._fill_transparent(holder, pixels)  # type: ignore[arg-type]
    got = bytes(
        jpeg8_encode(
            bgra,
            level=80,
            subsampling="422",
            colorspace=JPEG8.CS.EXT_BGRA,
            outcolorspace=JPEG8.CS.YCbCr,
        )
    )
    assert got == expected

    partial = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    partial[..., 3] = 255
    partial[:, :10] = 0
    partial[5, 20, 3] = 128
    before = partial.copy()
    assert not FastOpenSlideLevelImageData._fill_transparent(
        holder,  # pyright: ignore[reportArgumentType]
        partial.view(np.uint32)[..., 0],
    )
    np.testing.assert_array_equal(partial, before)
