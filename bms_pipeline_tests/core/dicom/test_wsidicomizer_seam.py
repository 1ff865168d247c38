"""The test that fails when wsidicomizer or openslide-python change under the project.

`core.dicom.wsidicomizer_seam` is the only module that reaches past their public interfaces.
These tests name what it relies on (private names, signatures) and check on a small slide that
each still behaves as the seam assumes: its reads are wsidicomizer's reads, its hooks are the
ones wsidicomizer calls, and with nothing overridden it writes wsidicomizer's own pixels. A
failure here after an upgrade means: adapt the seam (and only it), or keep the old version.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from upath import UPath
from wsidicom.codec import Encoder, JpegSettings
from wsidicom.geometry import Point, Region, Size
from wsidicomizer import SourceIdentifier, WsiDicomizer
from wsidicomizer.extras.openslide.openslide_image_data import OpenSlideLevelImageData
from wsidicomizer.image_data import BaseDicomizerImageData

from bms_pipeline.core.dicom.wsidicomizer_seam import (
    OpenSlideLevel,
    OpenSlideSourceSeam,
    ReleasableOpenSlide,
    library_problems,
    read_premultiplied_bgra,
    unpremultiply_to_rgba,
)
from bms_pipeline.core.synthetic.mirax_writer import MiraxGroundTruth
from bms_pipeline_tests.helpers import write_test_slide

TILE = 128


def _versions() -> str:
    return ", ".join(f"{name} {version(name)}" for name in ("wsidicomizer", "openslide-python"))


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> MiraxGroundTruth:
    return write_test_slide(tmp_path_factory.mktemp("seam"))


@pytest.fixture
def source(truth: MiraxGroundTruth):
    encoder = Encoder.create_for_settings(JpegSettings(quality=80))
    opened = OpenSlideSourceSeam(UPath(str(truth.mrxs_path)), encoder, tile_size=TILE)
    yield opened
    opened.close()


def test_the_installed_libraries_have_every_name_the_seam_uses(source) -> None:
    level = source.level_image_data(0)
    assert isinstance(level, OpenSlideLevel)
    problems = library_problems(source, level)
    assert not problems, (
        f"core/dicom/wsidicomizer_seam.py relies on what {_versions()} no longer has: "
        + "; ".join(problems)
    )


def test_the_sources_state_is_what_openslide_reports(source, truth: MiraxGroundTruth) -> None:
    slide = openslide.OpenSlide(str(truth.mrxs_path))
    props = slide.properties
    bounds = tuple(int(props[f"openslide.bounds-{k}"]) for k in ("x", "y", "width", "height"))
    assert isinstance(source.slide, openslide.OpenSlide)
    assert source.slide.dimensions == slide.dimensions
    assert source.converted_region == bounds, "wsidicomizer no longer crops to the bounds"
    assert source.requested_tile_size == TILE
    color = props[openslide.PROPERTY_NAME_BACKGROUND_COLOR]
    assert source.background == tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))
    assert isinstance(source.encoder, Encoder)
    macro = source.macro_image()
    assert macro is not None and macro.size == slide.associated_images["macro"].size
    for index in range(slide.level_count):
        level = source.level_image_data(index)
        assert isinstance(level, OpenSlideLevel)
        assert level.level_index == index
        downsample = slide.level_downsamples[index]
        start = Point(3, 5)
        assert level.base_location(Region(start, Size(1, 1))) == (
            bounds[0] + int(3 * downsample),
            bounds[1] + int(5 * downsample),
        ), f"level {index}: wsidicomizer places its reads elsewhere"
    slide.close()


def test_the_raw_read_is_openslides_public_read_before_unpremultiplying(
    truth: MiraxGroundTruth,
) -> None:
    """`read_premultiplied_bgra` + `unpremultiply_to_rgba` equal `OpenSlide.read_region`
    (which converts the same buffer for Pillow), on regions that cross the slide's edge."""
    slide = openslide.OpenSlide(str(truth.mrxs_path))
    for level in range(slide.level_count):
        for x, y, w, h in [(-40, -30, 97, 61), (300, 200, 150, 90), (700, 500, 64, 64)]:
            raw = read_premultiplied_bgra(slide, level, x, y, w, h)
            assert raw.shape == (h, w, 4) and raw.dtype == np.uint8
            expected = np.asarray(slide.read_region((x, y), level, (w, h)))
            np.testing.assert_array_equal(unpremultiply_to_rgba(raw.copy()), expected)
    slide.close()


def test_a_released_handle_reopens_for_reads_levels_and_associated_images(
    truth: MiraxGroundTruth,
) -> None:
    """Releasing drops the C handle (and OpenSlide's tile map); every later read, through
    the slide, a level made before the release or the associated images, opens it again and
    gives the same pixels."""
    encoder = Encoder.create_for_settings(JpegSettings(quality=80))
    source = OpenSlideSourceSeam(UPath(str(truth.mrxs_path)), encoder, tile_size=TILE)
    slide = source.make_slide_releasable()
    assert isinstance(slide, ReleasableOpenSlide)
    assert source.slide is slide and slide.is_open
    level = source.level_image_data(0)
    assert isinstance(level, OpenSlideLevel)
    region = Region(Point(3, 5), Size(200, 150))
    before = level.read_openslide_bgra(region)
    wsidicomizers = level.read_region(region, 0.0, "1")
    names = sorted(slide.associated_images)
    assert "macro" in names
    macro = np.asarray(source.macro_image())

    assert slide.release() and not slide.is_open
    assert not slide.release(), "a second release has nothing to close"
    np.testing.assert_array_equal(level.read_openslide_bgra(region), before)
    assert slide.is_open and slide.opens == 2
    assert slide.release()
    np.testing.assert_array_equal(level.read_region(region, 0.0, "1"), wsidicomizers)
    assert slide.release()
    np.testing.assert_array_equal(np.asarray(source.macro_image()), macro)
    assert sorted(slide.associated_images) == names
    assert slide.opens == 4

    with slide.reading():
        assert not slide.release(), "a read in progress keeps the handle"
        assert slide.is_open
    source.close()
    with pytest.raises(ValueError, match="closed"):
        slide.read_region((0, 0), 0, (4, 4))


def test_a_levels_read_is_wsidicomizers_own(source, truth: MiraxGroundTruth) -> None:
    """What wsidicomizer's level returns for a region (its public `read_region`) is the seam's
    raw read, unpremultiplied and composited by `composite`."""
    stock_source = OpenSlideSourceSeam(
        UPath(str(truth.mrxs_path)),
        Encoder.create_for_settings(JpegSettings(quality=80)),
        tile_size=TILE,
    )
    checked = 0
    for index in range(source.slide.level_count):
        level = source.level_image_data(index)
        stock = OpenSlideLevelImageData(
            stock_source.slide,
            stock_source.background,
            None if source.converted_region[:2] == (0, 0) else Point(*source.converted_region[:2]),
            Size(*source.converted_region[2:]),
            stock_source.metadata.pyramid.image,
            index,
            TILE,
            stock_source.encoder,
        )
        width, height = level.image_size.width, level.image_size.height
        for region in (Region(Point(0, 0), Size(width, height)), Region(Point(5, 7), Size(90, 70))):
            expected = stock.read_region(region, 0.0, "1")
            raw = level.read_openslide_bgra(region)
            if not raw[..., 3].any():
                continue  # wsidicomizer returns its blank frame for a transparent region
            got = level.composite(unpremultiply_to_rgba(raw))
            np.testing.assert_array_equal(got, expected, err_msg=f"level {index} {region}")
            checked += 1
    stock_source.close()
    assert checked >= 3


class _Recording(OpenSlideSourceSeam):
    """The seam's source, counting the hooks wsidicomizer calls and the compositing its
    level reads do (class attributes: WsiDicomizer constructs the source itself)."""

    calls: list[str] = []

    def level_image_data(self, level_index: int) -> BaseDicomizerImageData:
        self.calls.append(f"level {level_index}")
        return _CountingLevel(self, level_index)

    def overview_image_data(self) -> BaseDicomizerImageData | None:
        self.calls.append("overview")
        return super().overview_image_data()

    def thumbnail_image_data(self) -> BaseDicomizerImageData | None:
        self.calls.append("thumbnail")
        return super().thumbnail_image_data()


class _CountingLevel(OpenSlideLevel):
    def composite(self, rgba: np.ndarray) -> np.ndarray:
        _Recording.calls.append("composite")
        return super().composite(rgba)


def _convert(truth: MiraxGroundTruth, out: Path, source: object) -> list[Path]:
    files = WsiDicomizer.convert(
        truth.mrxs_path,
        out,
        tile_size=TILE,
        include_levels=[0, 1],
        include_label=False,
        include_overview=True,
        include_thumbnail=True,
        workers=1,
        encoding=JpegSettings(quality=80),
        preferred_source=source,  # pyright: ignore[reportArgumentType]
    )
    return sorted(Path(str(f)) for f in files)


def _pixels_by_kind(files: list[Path]) -> dict[tuple[str, int], bytes]:
    out = {}
    for path in files:
        ds = pydicom.dcmread(path)
        out[(str(ds.ImageType[2]), int(ds.get("TotalPixelMatrixColumns", ds.Columns)))] = (
            ds.PixelData
        )
    return out


def test_wsidicomizer_calls_the_hooks_and_writes_its_own_pixels_through_them(
    truth: MiraxGroundTruth, tmp_path: Path
) -> None:
    """The seam's source, overriding nothing, writes the frames of wsidicomizer's stock
    OpenSlide source; every hook it names is called, and the levels composite through
    `composite`."""
    _Recording.calls.clear()
    seam = _pixels_by_kind(_convert(truth, tmp_path / "seam", _Recording))
    calls = set(_Recording.calls)
    for hook in ("level 0", "level 1", "overview", "thumbnail", "composite"):
        assert hook in calls, (
            f"{_versions()}: wsidicomizer no longer reaches the seam's {hook!r} "
            f"(its hooks of OpenSlideSource / OpenSlideLevelImageData changed); calls: {calls}"
        )
    stock = _pixels_by_kind(_convert(truth, tmp_path / "stock", SourceIdentifier.OPENSLIDE))
    assert seam.keys() == stock.keys() and len(seam) >= 3
    for key, pixels in stock.items():
        assert seam[key] == pixels, f"{key}: the seam's frames differ from wsidicomizer's"


PRIVATE_NAMES = frozenset(
    {
        "_osr",
        "_read_region",
        "argb2rgba",
        "_get_region",
        "_composite_over_background",
        "_create_level_image_data",
        "_create_overview_image_data",
        "_create_thumbnail_image_data",
        "_create_label_image_data",
        "_base_level_offset",
        "_base_level_size",
        "_get_associated_image",
        "_get_blank_encoded_frame",
        "_detect_blank_tile",
        "_blank_color",
        "_level_index",
        "_downsample",
        "_offset",
    }
)
"""The private names of wsidicomizer and openslide-python the seam wraps."""
PRIVATE_MODULES = ("openslide.lowlevel", "openslide._convert", "wsidicomizer.extras.openslide")


def test_only_the_seam_uses_the_libraries_private_names() -> None:
    """Every use (attribute, definition or import, not prose) of a wrapped private name or
    module in the package is in core/dicom/wsidicomizer_seam.py."""
    import ast

    import bms_pipeline

    package = Path(bms_pipeline.__file__).parent
    seam = package / "core" / "dicom" / "wsidicomizer_seam.py"
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == seam:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.FunctionDef):
                names = [node.name]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = [a.name for a in node.names]
                if module.startswith(PRIVATE_MODULES):
                    names.append(module)
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith(PRIVATE_MODULES)]
            for name in names:
                if name in PRIVATE_NAMES or name.startswith(PRIVATE_MODULES):
                    found.append(
                        f"{path.relative_to(package)}:{getattr(node, 'lineno', 0)}: {name}"
                    )
    assert not found, "private library names outside the seam: " + ", ".join(found)
