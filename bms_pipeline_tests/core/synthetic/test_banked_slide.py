"""Real-size synthetic slides from a bank of camera images: exact, cheap, and refused early
when the disk is too small. Read back through the real OpenSlide."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import openslide
import pytest

from bms_pipeline.core.synthetic.banked import (
    Bank,
    BankedSlide,
    NotEnoughDiskError,
    estimated_bytes,
    write_banked_mirax,
)
from bms_pipeline.core.synthetic.demo import FULL_SIZE, slide_geometry, write_demo_dataset
from bms_pipeline.core.synthetic.mirax_writer import MiraxGeometry, MiraxSlideSpec
from bms_pipeline_tests.helpers import psnr

GEOMETRY = MiraxGeometry(
    image_width=256,
    image_height=192,
    fields_x=9,
    fields_y=7,
    divisions=2,
    overlap_x=16,
    overlap_y=12,
    levels=4,
    missing_fields=frozenset({(0, y) for y in range(7)} | {(x, 0) for x in range(9)} | {(4, 3)}),
)


@pytest.fixture(scope="module")
def banked(tmp_path_factory: pytest.TempPathFactory) -> tuple[BankedSlide, Path]:
    folder = tmp_path_factory.mktemp("banked")
    slide = BankedSlide.make(GEOMETRY, seed=3, bank_size=4, noise=0.0)
    spec = replace(MiraxSlideSpec(), geometry=GEOMETRY, jpeg_quality=95)
    write_banked_mirax(folder / "s.mrxs", spec, slide)
    return slide, folder / "s.mrxs"


def test_level0_reads_back_as_the_bank_images_it_was_given(banked) -> None:
    slide, mrxs = banked
    bx, by, bw, bh = GEOMETRY.bounds
    truth, unambiguous = slide.region(bx, by, bw, bh)
    with openslide.OpenSlide(str(mrxs)) as osr:
        got = np.asarray(osr.read_region((bx, by), 0, (bw, bh)))[..., :3]
    # Overlaps between camera fields hold two different bank images: only the rest is exact.
    assert unambiguous.mean() > 0.9
    assert psnr(got[unambiguous], truth[unambiguous]) >= 40.0


def test_every_level_is_the_box_filter_of_level0_also_next_to_unscanned_fields(banked) -> None:
    """Complete images share the bank's bytes; those next to the hole at field (4, 3) and the
    unscanned first row and column are composed one by one: both must match level 0."""
    _, mrxs = banked
    with openslide.OpenSlide(str(mrxs)) as osr:
        w, h = osr.dimensions
        level0 = np.asarray(osr.read_region((0, 0), 0, (w, h))).astype(np.float64)
        for level in range(1, GEOMETRY.levels):
            f = 2**level
            lw, lh = osr.level_dimensions[level]
            got = np.asarray(osr.read_region((0, 0), level, (lw, lh))).astype(np.float64)
            ref = level0[: lh * f, : lw * f].reshape(lh, f, lw, f, 4).mean(axis=(1, 3))
            opaque = (got[..., 3] == 255) & (ref[..., 3] == 255)
            assert opaque.mean() > 0.5
            assert psnr(got[..., :3][opaque], ref[..., :3][opaque]) >= 30.0, level


def test_annotated_cells_lie_in_their_fields_clear_of_the_overlaps() -> None:
    slide = BankedSlide.make(GEOMETRY, seed=3, bank_size=4)
    fields, cells, lineage, nuclei = slide.annotated_cells(max_fields=10)
    assert 0 < len(fields) <= 10 and len(cells) == len(lineage) == len(nuclei) > 0
    rects = np.array([(x + 16, y + 12, x + w - 16, y + h - 12) for x, y, w, h in fields])
    inside = (
        (cells[:, None, 0] >= rects[None, :, 0])
        & (cells[:, None, 1] >= rects[None, :, 1])
        & (cells[:, None, 2] <= rects[None, :, 2])
        & (cells[:, None, 3] <= rects[None, :, 3])
    )
    assert inside.any(axis=1).all()
    assert ((nuclei[:, :2] >= cells[:, :2] - 1) & (nuclei[:, 2:] <= cells[:, 2:] + 1)).all()


def test_a_slide_larger_than_the_free_disk_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    huge = MiraxGeometry(image_width=512, image_height=384, fields_x=3000, fields_y=3000, levels=6)
    slide = BankedSlide.make(huge, bank_size=2)
    spec = replace(MiraxSlideSpec(), geometry=huge, jpeg_quality=80, jpeg_subsampling=1)
    need = estimated_bytes(slide, Bank(slide, spec))
    assert need > shutil.disk_usage(tmp_path).free  # 36 million camera images
    with pytest.raises(NotEnoughDiskError, match=r"needs about [\d.]+ GB.*GB are free"):
        write_banked_mirax(tmp_path / "huge.mrxs", spec, slide)
    assert list(tmp_path.iterdir()) == []


def test_the_estimate_is_close_to_what_is_written(banked) -> None:
    slide, mrxs = banked
    spec = replace(MiraxSlideSpec(), geometry=GEOMETRY, jpeg_quality=95)
    written = sum(f.stat().st_size for f in mrxs.with_suffix("").iterdir())
    estimate = estimated_bytes(slide, Bank(slide, spec)) - (4 << 20)
    assert 0.8 * written <= estimate <= 1.25 * written


def test_full_size_is_the_largest_bmdeep_slide() -> None:
    geometry = slide_geometry(np.random.default_rng(0), "full", 0)
    width, height = geometry.bounds[2:]
    assert FULL_SIZE == (190_528, 448_768)
    assert width >= FULL_SIZE[0] and height >= FULL_SIZE[1]
    assert width - 1_008 < FULL_SIZE[0] and height - 756 < FULL_SIZE[1]


def test_demo_full_writes_any_size_with_annotations(tmp_path: Path) -> None:
    dataset = write_demo_dataset(tmp_path, slides=1, size="full", dimensions=(6_000, 4_000))
    (truth,) = dataset.slides.values()
    with openslide.OpenSlide(str(truth.mrxs_path)) as osr:
        assert int(osr.properties["openslide.bounds-width"]) >= 6_000
        assert int(osr.properties["openslide.bounds-height"]) >= 4_000
    cells = (tmp_path / "raw" / "annotations" / "cells.csv").read_text().splitlines()
    assert len(cells) > 10
