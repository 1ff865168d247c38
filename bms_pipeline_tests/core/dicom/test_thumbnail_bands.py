"""The THUMBNAIL is rendered band by band (flat memory in the slide's height) and gives the
same bytes as rendering the region read whole and resized in the same two passes, within
one grey level of Pillow's one-call resize."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from bms_pipeline.core.dicom import thumbnail
from bms_pipeline.core.dicom.thumbnail import (
    render_thumbnail,
    resize_in_two_passes,
    thumbnail_size,
)
from bms_pipeline.core.synthetic.mirax_writer import MiraxGeometry
from bms_pipeline_tests.helpers import write_test_slide

# One level only, so the region read is level 0: 11,000+ rows, three bands of 4096.
TALL = MiraxGeometry(
    image_width=128,
    image_height=96,
    fields_x=3,
    fields_y=62,
    divisions=2,
    overlap_x=8,
    overlap_y=6,
    levels=1,
    missing_fields=frozenset({(0, 0), (0, 1), (1, 0), (2, 0)}),
)


def _whole(slide: openslide.OpenSlide, bounds: tuple[int, int, int, int]) -> Image.Image:
    """The rendering before bands: the region read at once and composited."""
    x, y, width, height = bounds
    size = thumbnail_size(width, height)
    level = slide.get_best_level_for_downsample(max(1.0, width / size[0]))
    ds = float(slide.level_downsamples[level])
    rgba = slide.read_region(
        (x, y), level, (max(1, math.ceil(width / ds)), max(1, math.ceil(height / ds)))
    )
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


@pytest.mark.parametrize("piece", [4096, 128], ids=["openslide-pieces", "several-columns"])
def test_a_thumbnail_rendered_in_bands_equals_one_rendered_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    # 128-px pieces put several piece columns and a short last band in every region; the
    # region is read at level 0, where the pieces' origins do not change the pixels.
    monkeypatch.setattr(thumbnail, "_OPENSLIDE_PIECE", piece)
    truth = write_test_slide(tmp_path, geometry=TALL)
    with openslide.OpenSlide(str(truth.mrxs_path)) as slide:
        bounds = truth.bounds
        assert bounds[3] > 2 * piece, "the region must span several bands"
        assert piece > 1000 or bounds[2] > 2 * piece, "and, with small pieces, several columns"
        for region in (bounds, (0, 0, *slide.dimensions), (bounds[0] + 5, 3, 301, bounds[3])):
            banded = render_thumbnail(slide, region, (255, 255, 255))
            assert banded.shape[:2] == thumbnail_size(region[2], region[3])[::-1]
            size = thumbnail_size(region[2], region[3])
            whole = _whole(slide, region)
            assert np.array_equal(banded, np.asarray(resize_in_two_passes(whole, size))), region
            one_call = np.asarray(whole.resize(size, Image.Resampling.LANCZOS))
            assert np.abs(banded.astype(int) - one_call).max() <= 1, region
            assert banded.std() > 1.0, "not a blank picture"
