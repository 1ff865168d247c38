"""The synthetic MIRAX writer against its own ground truth, read through the real OpenSlide."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import openslide
import pytest

from bms_pipeline.core.synthetic.mirax_writer import MiraxGeometry
from bms_pipeline_tests.helpers import TINY_GEOMETRY, psnr, write_test_slide


def _level0(slide: openslide.OpenSlide, bounds: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = bounds
    return np.asarray(slide.read_region((x, y), 0, (w, h)))


@pytest.mark.parametrize("position_layer", ["vimslide", "stitching", "none"])
def test_png_slide_reads_back_exactly_in_scanned_fields(
    tmp_path: Path, position_layer: str
) -> None:
    truth = write_test_slide(tmp_path, image_format="PNG", position_layer=position_layer)
    with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
        rgba = _level0(slide, truth.bounds)
    mask = truth.scanned_mask(*truth.bounds)
    expected = truth.region(*truth.bounds)
    assert (rgba[..., 3][mask] == 255).all()
    np.testing.assert_array_equal(rgba[..., :3][mask], expected[mask])


def test_jpeg_slide_is_within_35_db_of_ground_truth(tmp_path: Path) -> None:
    truth = write_test_slide(tmp_path, image_format="JPEG", jpeg_quality=92)
    with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
        rgba = _level0(slide, truth.bounds)
    mask = truth.scanned_mask(*truth.bounds)
    assert psnr(rgba[..., :3][mask], truth.region(*truth.bounds)[mask]) >= 35.0


def test_slide_has_bounds_levels_sparse_fields_and_associated_images(tmp_path: Path) -> None:
    truth = write_test_slide(tmp_path)
    with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
        props = slide.properties
        bounds = tuple(int(props[f"openslide.bounds-{k}"]) for k in ("x", "y", "width", "height"))
        assert bounds == truth.bounds
        assert bounds[0] > 0 and bounds[1] > 0
        assert slide.dimensions == TINY_GEOMETRY.canvas_size
        assert slide.level_count == TINY_GEOMETRY.levels
        assert set(slide.associated_images) == {"label", "macro", "thumbnail"}
        # The unscanned interior field (2, 2) reads as transparent at every level.
        fx, fy = TINY_GEOMETRY.field_origin(2, 2)
        cx = fx + TINY_GEOMETRY.image_width  # the field's centre, clear of the overlaps
        cy = fy + TINY_GEOMETRY.image_height
        for level in range(slide.level_count):
            patch = np.asarray(slide.read_region((cx, cy), level, (4, 4)))
            assert (patch[..., 3] == 0).all(), (
                f"level {level} is not transparent in a missing field"
            )


def test_non_square_images_and_overlap_follow_openslide_geometry(tmp_path: Path) -> None:
    geometry = MiraxGeometry(
        image_width=160,
        image_height=64,
        fields_x=3,
        fields_y=4,
        divisions=1,
        overlap_x=7,
        overlap_y=3,
        levels=2,
        missing_fields=frozenset({(0, 0)}),
    )
    truth = write_test_slide(tmp_path, geometry=geometry, image_format="PNG")
    with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
        assert slide.dimensions == (3 * 160 - 2 * 7, 4 * 64 - 3 * 3)
        rgba = _level0(slide, truth.bounds)
    mask = truth.scanned_mask(*truth.bounds)
    np.testing.assert_array_equal(rgba[..., :3][mask], truth.region(*truth.bounds)[mask])


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    def digest(folder: Path) -> dict[str, str]:
        truth = write_test_slide(folder)
        root = truth.mrxs_path.parent
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_label_image_carries_the_fake_patient_text(tmp_path: Path) -> None:
    truth = write_test_slide(tmp_path)
    with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
        label = np.asarray(slide.associated_images["label"].convert("L"))
    # Dark text pixels on a light label: the PHI the converter must not export.
    assert (label < 80).sum() > 200
