"""demo-data's sizes: `wide` is the real BMDeep width, `--width/--height` at least what was asked."""

from __future__ import annotations

import numpy as np
import pytest

from bms_pipeline.core.synthetic.demo import WIDE_SIZE, slide_geometry


def test_wide_slide_has_the_real_width() -> None:
    geometry = slide_geometry(np.random.default_rng(0), "wide", 0)
    assert geometry.bounds[2:] == WIDE_SIZE == (190_528, 14_376)


@pytest.mark.parametrize("size", [(5_000, 3_000), (30_256, 30_252), (100_001, 2_000)])
def test_requested_dimensions_are_the_smallest_field_grid_that_covers_them(
    size: tuple[int, int],
) -> None:
    geometry = slide_geometry(np.random.default_rng(1), "small", 0, size)
    width, height = geometry.bounds[2:]
    assert width >= size[0] and height >= size[1]
    # one camera field (1,024 - 16 and 768 - 12 px of advance) fewer would not cover them
    assert width - 1_008 < size[0] and height - 756 < size[1]
