"""MiraxDirectReader against OpenSlide 4, byte for byte, on slides the project's writer makes."""

from __future__ import annotations

import ctypes
import io
import re
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import openslide
import pytest
from openslide.lowlevel import _read_region
from PIL import Image, JpegImagePlugin

from bms_pipeline.core.mirax.direct import (
    MiraxDirectError,
    MiraxDirectReader,
    MiraxDirectUnsupported,
    decode_image_bgra,
)
from bms_pipeline.core.mirax.inventory import check_complete, index_records
from bms_pipeline.core.synthetic.mirax_writer import MiraxGroundTruth
from bms_pipeline_tests.helpers import TINY_GEOMETRY, write_test_slide

# Overlaps that are multiples of 8 keep every field at a whole pixel of level 3, so all
# four levels (with images split into sub-tiles from level 2 on) are plain pastes.
ALIGNED_GEOMETRY = replace(TINY_GEOMETRY, overlap_x=16, overlap_y=8, levels=4)
# No overlap and no position layer: OpenSlide's other tile-map branch.
PLAIN_GEOMETRY = replace(
    TINY_GEOMETRY,
    fields_x=4,
    fields_y=3,
    overlap_x=0,
    overlap_y=0,
    levels=4,
    missing_fields=frozenset({(1, 1), (3, 0)}),
)

SLIDES = {
    # name: (write_test_slide arguments, expected supports_level per level)
    "jpeg_vimslide": ({"image_format": "JPEG", "max_datafile_bytes": 40_000}, [True, True, False]),
    "png_stitching": ({"image_format": "PNG", "position_layer": "stitching"}, [True, True, False]),
    "jpeg_none": ({"image_format": "JPEG", "position_layer": "none"}, [True, True, False]),
    "jpeg_aligned": (
        {"image_format": "JPEG", "geometry": ALIGNED_GEOMETRY, "max_datafile_bytes": 60_000},
        [True] * 4,
    ),
    "png_plain": (
        {"image_format": "PNG", "position_layer": "none", "geometry": PLAIN_GEOMETRY},
        [True] * 4,
    ),
}


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MiraxGroundTruth]:
    root = tmp_path_factory.mktemp("mirax_direct")
    return {name: write_test_slide(root / name, **kwargs) for name, (kwargs, _) in SLIDES.items()}


def openslide_bgra(
    slide: openslide.OpenSlide, level: int, x: int, y: int, w: int, h: int
) -> np.ndarray:
    """The buffer `openslide_read_region` fills, read the way fast_source._read_bgra does."""
    buffer = np.empty((h, w, 4), dtype=np.uint8)
    pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
    _read_region(slide._osr, pointer, x, y, level, w, h)
    return buffer


def assert_same(
    reader: MiraxDirectReader,
    slide: openslide.OpenSlide,
    level: int,
    region: tuple[int, int, int, int],
) -> np.ndarray:
    got = reader.read_bgra(level, *region)
    expected = openslide_bgra(slide, level, *region)
    assert got.shape == expected.shape and got.dtype == np.uint8
    if not np.array_equal(got, expected):
        bad = np.argwhere((got != expected).any(axis=-1))
        pytest.fail(f"level {level} region {region}: {len(bad)} pixels differ, first at {bad[0]}")
    return got


def random_regions(
    rng: np.random.Generator,
    size: tuple[int, int],
    count: int,
    margin: int = 300,
    max_side: int = 420,
) -> list[tuple[int, int, int, int]]:
    """Regions anywhere from before the slide's origin to beyond its far edge."""
    w, h = size
    return [
        (
            int(rng.integers(-margin, w + margin // 3)),
            int(rng.integers(-margin, h + margin // 3)),
            int(rng.integers(1, max_side)),
            int(rng.integers(1, max_side)),
        )
        for _ in range(count)
    ]


def field_regions(truth: MiraxGroundTruth) -> list[tuple[int, int, int, int]]:
    """Seams between neighbouring fields, the centre of every missing field, the corners."""
    g = truth.spec.geometry
    field_w, field_h = g.divisions * g.image_width, g.divisions * g.image_height
    regions = []
    for yp in range(g.fields_y):
        for xp in range(g.fields_x):
            fx, fy = g.field_origin(xp, yp)
            regions.append((fx - 2 * g.overlap_x - 3, fy + 5, 4 * g.overlap_x + 7, 37))  # left seam
            regions.append((fx + 3, fy - 2 * g.overlap_y - 2, 41, 4 * g.overlap_y + 5))  # top seam
            regions.append((fx - 9, fy - 7, 19, 15))  # corner where four fields meet
            if (xp, yp) in g.missing_fields:
                regions.append((fx + field_w // 2 - 20, fy + field_h // 2 - 10, 40, 20))
    width, height = g.canvas_size
    regions += [(-50, -40, 120, 90), (width - 60, height - 50, 130, 100), (width + 5, 0, 10, 10)]
    return regions


@pytest.fixture(scope="module")
def opened(slides: dict[str, MiraxGroundTruth]):
    handles: dict[str, tuple[MiraxDirectReader, openslide.OpenSlide]] = {}
    for name, truth in slides.items():
        handles[name] = (
            MiraxDirectReader.open(truth.mrxs_path),
            openslide.OpenSlide(str(truth.mrxs_path)),
        )
    yield handles
    for reader, slide in handles.values():
        reader.close()
        slide.close()


@pytest.mark.parametrize("name", SLIDES)
def test_bounds_and_supported_levels(opened, name: str) -> None:
    reader, slide = opened[name]
    props = slide.properties
    if "openslide.bounds-x" in props:
        expected = tuple(int(props[f"openslide.bounds-{k}"]) for k in ("x", "y", "width", "height"))
    else:  # OpenSlide leaves the bounds out when they are the whole slide
        expected = (0, 0, *slide.dimensions)
    assert reader.bounds == expected
    assert reader.level_downsamples == tuple(slide.level_downsamples)
    assert [reader.supports_level(level) for level in range(reader.level_count)] == SLIDES[name][1]
    assert not reader.supports_level(reader.level_count)


@pytest.mark.parametrize("name", SLIDES)
def test_level0_matches_openslide(opened, slides, name: str) -> None:
    reader, slide = opened[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    regions = random_regions(rng, slide.dimensions, 60) + field_regions(slides[name])
    covered = 0
    for region in regions:
        covered += int(assert_same(reader, slide, 0, region)[..., 3].any())
    assert covered > len(regions) // 3, "most regions should show image pixels"


@pytest.mark.parametrize("name", SLIDES)
def test_supported_higher_levels_match_openslide(opened, name: str) -> None:
    """Reads whose origin is the bounds plus whole level pixels, as a DICOM conversion makes."""
    reader, slide = opened[name]
    rng = np.random.default_rng(7)
    bx, by = reader.bounds[:2]
    checked = 0
    for level in range(1, reader.level_count):
        if not reader.supports_level(level):
            with pytest.raises(MiraxDirectUnsupported, match=f"level {level}"):
                reader.read_bgra(level, bx, by, 64, 64)
            continue
        ds = int(reader.level_downsamples[level])
        w, h = slide.level_dimensions[level]
        for _ in range(25):
            x = bx + ds * int(rng.integers(-60, w))
            y = by + ds * int(rng.integers(-60, h))
            assert_same(
                reader, slide, level, (x, y, int(rng.integers(1, 300)), int(rng.integers(1, 300)))
            )
            checked += 1
        # the tiles of a conversion, from the bounds origin
        for ty in range(0, h, 256):
            for tx in range(0, w, 256):
                assert_same(reader, slide, level, (bx + tx * ds, by + ty * ds, 256, 256))
    assert checked >= 25


@pytest.mark.parametrize("name", ["jpeg_vimslide", "jpeg_aligned"])
def test_any_read_equals_openslide_or_is_refused(opened, name: str) -> None:
    """Off-grid origins at higher levels make OpenSlide resample; the reader must refuse
    those rather than return different pixels, and never refuse at level 0."""
    reader, slide = opened[name]
    rng = np.random.default_rng(11)
    outcomes = {"equal": 0, "refused": 0}
    for level in range(reader.level_count):
        for x, y, w, h in random_regions(rng, slide.dimensions, 20, margin=500, max_side=200):
            try:
                got = reader.read_bgra(level, x, y, w, h)
            except MiraxDirectUnsupported:
                assert level > 0
                outcomes["refused"] += 1
                continue
            np.testing.assert_array_equal(got, openslide_bgra(slide, level, x, y, w, h))
            outcomes["equal"] += 1
    assert outcomes["equal"] > 20 and outcomes["refused"] > 0


@pytest.mark.parametrize("name", ["jpeg_vimslide", "jpeg_aligned"])
def test_reads_larger_than_openslides_4096_pieces(opened, name: str) -> None:
    """openslide_read_region paints 4096 x 4096 pieces, each shifting a negative origin."""
    reader, slide = opened[name]
    width, height = slide.dimensions
    assert_same(reader, slide, 0, (-3000, 40, width + 3300, 61))
    assert_same(reader, slide, 0, (150, -4200, 37, height + 4400))
    if reader.supports_level(1):
        bx, by = reader.bounds[:2]
        assert_same(reader, slide, 1, (bx - 2 * 4500, by + 20, 4700, 33))


def level0_blob(truth: MiraxGroundTruth, x: int, y: int) -> tuple[Path, int, int, bytes]:
    """Data file, offset, length and bytes of level-0 image (x, y)."""
    files = check_complete(truth.mrxs_path)
    images_x = truth.spec.geometry.images_x
    for record in index_records(
        files.index.read_bytes(), files.sections["GENERAL"]["SLIDE_ID"], files
    ):
        if record.level == 0 and record.image_index == y * images_x + x:
            path = files.datafiles[record.fileno]
            with open(path, "rb") as handle:
                handle.seek(record.offset)
                return path, record.offset, record.length, handle.read(record.length)
    raise AssertionError(f"no level-0 image ({x}, {y})")


def test_jpeg_overlap_shows_the_later_field(opened, slides) -> None:
    """Overlapping JPEG fields differ by compression artifacts; OpenSlide shows the field
    with the larger (row, column) index there, and so must the reader."""
    reader, slide = opened["jpeg_vimslide"]
    g = slides["jpeg_vimslide"].spec.geometry
    # fields (2, 1) and (3, 1) overlap in the last overlap_x columns of image (5, y)
    left_image_x, image_y = 2 * g.divisions + 1, 1 * g.divisions
    left_x, top = g.image_origin(left_image_x, image_y)
    right_field_x = g.field_origin(3, 1)[0]
    seam = (right_field_x, top, g.overlap_x, g.image_height)
    got = assert_same(reader, slide, 0, seam)
    *_, blob = level0_blob(slides["jpeg_vimslide"], left_image_x, image_y)
    left = decode_image_bgra(blob, "JPEG")[:, right_field_x - left_x :]
    assert left.shape == got.shape
    assert not np.array_equal(left, got), "the earlier field must be painted over"


def test_missing_fields_read_as_transparent(opened, slides) -> None:
    reader, slide = opened["png_stitching"]
    g = slides["png_stitching"].spec.geometry
    fx, fy = g.field_origin(2, 2)
    region = (fx + g.overlap_x, fy + g.overlap_y, g.image_width, g.image_height)
    assert not assert_same(reader, slide, 0, region).any()


def test_jpeg_slide_spreads_over_several_data_files(slides) -> None:
    files = check_complete(slides["jpeg_vimslide"].mrxs_path)
    records = index_records(files.index.read_bytes(), files.sections["GENERAL"]["SLIDE_ID"], files)
    assert len({r.fileno for r in records if r.level == 0}) >= 3


def test_concurrent_reads_equal_openslide_with_a_thrashing_cache(slides) -> None:
    """A 600 KB budget holds only a few 48 KB images, so threads keep evicting, reusing
    buffers and waiting on each other's decodes."""
    truth = slides["jpeg_aligned"]
    rng = np.random.default_rng(3)
    with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
        jobs = [(0, *r) for r in random_regions(rng, slide.dimensions, 60, max_side=300)]
        bx, by = truth.bounds[:2]
        jobs += [(2, bx + 4 * 64 * c, by + 4 * 64 * r, 64, 64) for r in range(4) for c in range(6)]
        expected = [openslide_bgra(slide, *job) for job in jobs]
    with MiraxDirectReader.open(truth.mrxs_path, cache_bytes=600_000) as reader:
        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                results = list(pool.map(lambda job: reader.read_bgra(*job), jobs))
                for job, got, want in zip(jobs, results, expected, strict=True):
                    assert np.array_equal(got, want), job
        stats = reader.cache_stats()
    assert stats.bytes <= 600_000 and stats.entries <= 600_000 // (128 * 96 * 4)
    assert stats.misses > 100, "the small budget should force decoding images again"


def test_raster_order_decodes_each_image_once(slides) -> None:
    truth = slides["jpeg_vimslide"]
    g = truth.spec.geometry
    stored = sum(1 for y in range(g.images_y) for x in range(g.images_x) if g.is_scanned(x, y))
    with MiraxDirectReader.open(truth.mrxs_path) as reader:
        bx, by, bw, bh = reader.bounds
        with ThreadPoolExecutor(2) as pool:
            list(
                pool.map(
                    lambda xy: reader.read_bgra(0, *xy, 128, 128),  # pyright: ignore[reportCallIssue]
                    [(bx + tx, by + ty) for ty in range(0, bh, 128) for tx in range(0, bw, 128)],
                )
            )
        assert reader.cache_stats().misses == stored


def test_degenerate_reads(opened) -> None:
    reader, slide = opened["jpeg_vimslide"]
    assert reader.read_bgra(0, 300, 300, 0, 7).shape == (7, 0, 4)
    assert_same(reader, slide, 5, (300, 300, 16, 16))  # no such level: OpenSlide paints nothing
    with pytest.raises(ValueError, match="negative"):
        reader.read_bgra(0, 0, 0, -1, 4)


def test_closed_reader_refuses_reads(slides) -> None:
    with MiraxDirectReader.open(slides["png_plain"].mrxs_path) as reader:
        assert reader.read_bgra(0, 0, 0, 8, 8)[..., 3].all()
    with pytest.raises(ValueError, match="closed"):
        reader.read_bgra(0, 0, 0, 8, 8)


# slides that the reader must refuse or report ----------------------------------------------


def copy_slide(truth: MiraxGroundTruth, dest: Path) -> Path:
    dest.mkdir(parents=True)
    folder = truth.mrxs_path.with_suffix("")
    shutil.copytree(folder, dest / folder.name)
    return Path(shutil.copy(truth.mrxs_path, dest / truth.mrxs_path.name))


def edit_slidedat(mrxs: Path, edit) -> Path:
    path = mrxs.with_suffix("") / "Slidedat.ini"
    text = path.read_bytes().decode("utf-8-sig")
    changed = edit(text)
    assert changed != text, "the edit must change Slidedat.ini"
    path.write_bytes(b"\xef\xbb\xbf" + changed.encode("utf-8"))
    return path


def set_level_key(level: int, key: str, value: str):
    def edit(text: str) -> str:
        pattern = rf"(\[LAYER_0_LEVEL_{level}_SECTION\][^\[]*?{key} = )[^\r\n]*"
        return re.sub(pattern, rf"\g<1>{value}", text, count=1)

    return edit


def test_bmp_level0_is_refused_at_open(slides, tmp_path: Path) -> None:
    mrxs = copy_slide(slides["jpeg_vimslide"], tmp_path / "bmp")
    slidedat = edit_slidedat(mrxs, set_level_key(0, "IMAGE_FORMAT", "BMP24"))
    with pytest.raises(MiraxDirectUnsupported) as caught:
        MiraxDirectReader.open(mrxs)
    assert str(slidedat) in str(caught.value) and "BMP24" in str(caught.value)


def test_bmp_higher_level_is_refused_only_there(slides, tmp_path: Path) -> None:
    mrxs = copy_slide(slides["jpeg_aligned"], tmp_path / "bmp2")
    edit_slidedat(mrxs, set_level_key(2, "IMAGE_FORMAT", "BMP24"))
    with MiraxDirectReader.open(mrxs) as reader, openslide.OpenSlide(str(mrxs)) as slide:
        assert [reader.supports_level(level) for level in range(4)] == [True, True, False, True]
        assert "BMP24" in (reader.unsupported_reason(2) or "")
        with pytest.raises(MiraxDirectUnsupported, match="BMP24"):
            reader.read_bgra(2, 0, 0, 32, 32)
        bx, by = reader.bounds[:2]
        assert_same(reader, slide, 0, (bx + 100, by + 50, 300, 200))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t.replace("[DATAFILE]", "[DATA_FILES]"), "no \\[DATAFILE\\] group"),
        (lambda t: t.replace("HIER_0_COUNT = 3", "HIER_0_COUNT = three"), "HIER_0_COUNT"),
        (
            lambda t: t.replace(
                "CameraImageDivisionsPerSide = 2", "CameraImageDivisionsPerSide = 3"
            ),
            "camera fields",
        ),
        (set_level_key(0, "IMAGE_CONCAT_FACTOR", "1"), "IMAGE_CONCAT_FACTOR"),
        (set_level_key(0, "IMAGE_FORMAT", "TIFF"), "IMAGE_FORMAT = 'TIFF'"),
        (set_level_key(0, "OVERLAP_X", "10.3"), "not a multiple of 1/256"),
    ],
)
def test_layouts_it_cannot_reproduce_are_refused_naming_slidedat(
    slides, tmp_path: Path, edit, reason: str
) -> None:
    mrxs = copy_slide(slides["jpeg_vimslide"], tmp_path / "edited")
    slidedat = edit_slidedat(mrxs, edit)
    with pytest.raises(MiraxDirectUnsupported, match=reason) as caught:
        MiraxDirectReader.open(mrxs)
    assert str(slidedat) in str(caught.value)


def test_corrupt_index_is_refused_naming_index(slides, tmp_path: Path) -> None:
    mrxs = copy_slide(slides["jpeg_vimslide"], tmp_path / "index")
    index = mrxs.with_suffix("") / "Index.dat"
    index.write_bytes(index.read_bytes()[:200])
    with pytest.raises(MiraxDirectUnsupported, match="truncated") as caught:
        MiraxDirectReader.open(mrxs)
    assert str(index) in str(caught.value)


def test_truncated_data_file_names_the_file(slides, tmp_path: Path) -> None:
    truth = slides["jpeg_vimslide"]
    mrxs = copy_slide(truth, tmp_path / "cut")
    g = truth.spec.geometry
    image_x, image_y = 6, 5
    original, offset, length, _ = level0_blob(truth, image_x, image_y)
    datafile = mrxs.with_suffix("") / original.name
    with open(datafile, "r+b") as handle:
        handle.truncate(offset + length // 2)
    ox, oy = g.image_origin(image_x, image_y)
    with MiraxDirectReader.open(mrxs) as reader:
        with pytest.raises(MiraxDirectError, match="truncated") as caught:
            reader.read_bgra(0, ox + 20, oy + 20, 40, 40)
        assert str(datafile) in str(caught.value)
        # images in other data files still read exactly
        far = next(
            (x, y)
            for y in range(g.images_y)
            for x in range(g.images_x)
            if g.is_scanned(x, y) and level0_blob(truth, x, y)[0].name != original.name
        )
        fx, fy = g.image_origin(*far)
        # OpenSlide hashes low-resolution images on open, which the cut file may lack
        with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
            assert_same(reader, slide, 0, (fx + 30, fy + 20, 50, 40))


def replace_level0_image(mrxs: Path, truth: MiraxGroundTruth, x: int, y: int, blob: bytes) -> None:
    """Append `blob` to the image's data file and point its Index.dat record at it."""
    datafile, offset, length, _ = level0_blob(truth, x, y)
    datafile = mrxs.with_suffix("") / datafile.name
    fileno = int(datafile.stem[4:])
    new_offset = datafile.stat().st_size
    with open(datafile, "ab") as handle:
        handle.write(blob)
    index = mrxs.with_suffix("") / "Index.dat"
    image_index = y * truth.spec.geometry.images_x + x
    old = struct.pack("<iiii", image_index, offset, length, fileno)
    data = index.read_bytes()
    assert data.count(old) == 1
    index.write_bytes(
        data.replace(old, struct.pack("<iiii", image_index, new_offset, len(blob), fileno))
    )


def test_grey_png_matches_openslide_and_alpha_png_is_refused(slides, tmp_path: Path) -> None:
    """OpenSlide expands grey PNGs to RGB and rejects alpha: equal pixels for the first,
    a refusal (not different pixels) for the second."""
    truth = slides["png_stitching"]
    g = truth.spec.geometry
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (g.image_height, g.image_width), dtype=np.uint8)
    rgba = rng.integers(0, 256, (g.image_height, g.image_width, 4), dtype=np.uint8)
    blobs = []
    for pixels, mode in ((grey, "L"), (rgba, "RGBA")):
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    mrxs = copy_slide(truth, tmp_path / "png")
    replace_level0_image(mrxs, truth, 4, 2, blobs[0])
    replace_level0_image(mrxs, truth, 7, 5, blobs[1])
    with MiraxDirectReader.open(mrxs) as reader, openslide.OpenSlide(str(mrxs)) as slide:
        ox, oy = g.image_origin(4, 2)
        got = assert_same(
            reader, slide, 0, (ox - 20, oy - 10, g.image_width + 40, g.image_height + 20)
        )
        inner = got[
            10 + g.overlap_y : 10 + g.image_height - g.overlap_y,
            20 + g.overlap_x : 20 + g.image_width - g.overlap_x,
        ]
        assert (inner[..., 0] == inner[..., 1]).all() and (inner[..., 1] == inner[..., 2]).all()
        ox, oy = g.image_origin(7, 5)
        with pytest.raises(MiraxDirectUnsupported, match="colour type 6"):
            reader.read_bgra(0, ox + 10, oy + 10, 20, 20)


@pytest.mark.parametrize(
    ("subsampling", "mode"), [(2, "RGB"), (1, "RGB"), (0, "L")], ids=["4:2:0", "4:2:2", "grey"]
)
def test_subsampled_and_grey_jpeg_images_match_openslide(
    slides, tmp_path: Path, subsampling: int, mode: str
) -> None:
    """The writer stores 4:4:4 JPEGs; scanners often store 4:2:0, where the decoder's
    upsampling and colour conversion must match OpenSlide's libjpeg-turbo call too."""
    truth = slides["jpeg_vimslide"]
    g = truth.spec.geometry
    *_, blob = level0_blob(truth, 4, 2)
    pixels = Image.open(io.BytesIO(blob)).convert(mode)
    buffer = io.BytesIO()
    pixels.save(buffer, "JPEG", quality=75, subsampling=subsampling)
    replacement = buffer.getvalue()
    if mode == "RGB":
        assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(replacement))) == subsampling
    mrxs = copy_slide(truth, tmp_path / "jpeg")
    replace_level0_image(mrxs, truth, 4, 2, replacement)
    ox, oy = g.image_origin(4, 2)
    with MiraxDirectReader.open(mrxs) as reader, openslide.OpenSlide(str(mrxs)) as slide:
        got = assert_same(
            reader, slide, 0, (ox - 20, oy - 10, g.image_width + 40, g.image_height + 20)
        )
    stored = np.asarray(Image.open(io.BytesIO(replacement)).convert("RGB"))
    assert not np.array_equal(got[10:-10, 20:-20, 2::-1], np.asarray(pixels.convert("RGB")))
    assert np.abs(got[10:-10, 20:-20, 2::-1].astype(int) - stored).max() <= 2  # same image


def test_cache_keeps_carries_for_the_next_tile_row_and_evicts_finished_images_first() -> None:
    """Over budget, images the next tile row does not need go first (least recent first);
    when only carries are left, the newest carry goes, so the oldest (the left part of the
    row, which the next tile row reads first) stays. A new level releases the carries."""
    from bms_pipeline.core.mirax.direct.cache import ImageCache

    shape = (2, 2, 4)
    cache = ImageCache(budget=3 * 16)  # three 2 x 2 BGRA images

    def get(key: int, carry: bool, group: int = 0) -> None:
        entry = cache.acquire(
            (0, key), shape, lambda spare: np.zeros(shape, np.uint8), carry=carry, group=group
        )
        assert entry is not None
        cache.release(entry)

    def misses() -> int:
        return cache.stats().misses

    get(1, True)
    get(2, True)
    get(3, False)
    get(4, False)  # evicts 3, not a carry
    get(5, True)  # evicts 4
    get(6, True)  # only carries left: 6 itself is not kept
    before = misses()
    get(1, False)
    get(2, False)
    get(5, False)
    assert misses() == before  # all three carries were kept
    get(6, False)
    assert misses() == before + 1
    get(7, True, group=1)  # another level: the old carries are ordinary entries, LRU first
    before = misses()
    get(7, False, group=1)
    assert misses() == before


def _kept_by_open(mrxs: Path) -> int:
    """Bytes that `MiraxDirectReader.open` allocates and keeps (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        reader = MiraxDirectReader.open(mrxs)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    with reader:
        assert reader.supports_level(0)
    return kept


def _stored_images(mrxs: Path) -> int:
    files = check_complete(mrxs)
    records = index_records(files.index.read_bytes(), files.sections["GENERAL"]["SLIDE_ID"], files)
    return sum(1 for record in records if record.level is not None)


def test_the_tile_map_costs_a_few_bytes_a_stored_image(tmp_path: Path) -> None:
    """A full-height BMDeep slide has about 600,000 stored images: as Python objects its
    tile maps took about 450 bytes more per image (375 MiB, which grew the converter's
    peak memory with the slide's height); held in arrays, under 100."""
    short, tall = (
        write_test_slide(
            tmp_path / str(fields_y),
            geometry=replace(ALIGNED_GEOMETRY, fields_x=24, fields_y=fields_y),
        ).mrxs_path
        for fields_y in (10, 40)
    )
    more_images = _stored_images(tall) - _stored_images(short)
    assert more_images > 2000
    per_image = (_kept_by_open(tall) - _kept_by_open(short)) / more_images
    assert 0 < per_image < 100, f"{per_image:.0f} bytes a stored image"
