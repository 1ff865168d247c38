"""The THUMBNAIL rule: compared where the pyramid has the detail, and, being about an optional
object the pipeline makes itself, a failure leaves the THUMBNAIL out with a warning; it
never withholds the slide. Privacy failures still refuse it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from bms_pipeline.core.dicom import fast_source
from bms_pipeline.core.dicom.publication import PublicationRefused
from bms_pipeline.core.dicom.thumbnail import compared_level
from bms_pipeline_tests.conftest import convert_test_slide
from bms_pipeline_tests.helpers import write_test_slide

NINE_LEVELS = [(3742 >> k, 2497 >> k) for k in (0, 2, 4, 6, 8)]  # the kept levels, 14 px last


def test_the_thumbnail_is_compared_with_the_smallest_level_at_least_its_size() -> None:
    assert compared_level((1024, 683), NINE_LEVELS) == 0
    assert compared_level((200, 133), NINE_LEVELS) == 2  # 233 x 156, not the 58 or 14 px
    assert compared_level((935, 624), NINE_LEVELS) == 1  # exactly its size
    # No kept level is that large (a collection keeping only small levels): the largest.
    assert compared_level((1024, 683), NINE_LEVELS[2:]) == 0
    assert compared_level((1024, 683), []) is None


def _numbers_and_flavors(files: list[Path]) -> tuple[list[int], list[str]]:
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return (
        sorted(int(ds.InstanceNumber) for ds in headers),
        sorted(str(ds.ImageType[2]) for ds in headers),
    )


@pytest.fixture
def wrong_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """A THUMBNAIL of another region (the right one rolled by half its size). A fault: the
    pipeline renders the right region, so a wrong THUMBNAIL cannot be made otherwise."""
    right = fast_source.render_thumbnail

    def rolled(*args, **kwargs) -> np.ndarray:
        pixels = right(*args, **kwargs)
        return np.roll(pixels, (pixels.shape[0] // 2, pixels.shape[1] // 2), axis=(0, 1))

    monkeypatch.setattr(fast_source, "render_thumbnail", rolled)


def test_a_wrong_thumbnail_is_left_out_with_a_warning_and_the_slide_published(
    tmp_path: Path, wrong_render: None
) -> None:
    truth = write_test_slide(tmp_path / "raw")
    result = convert_test_slide(truth, tmp_path / "out")
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("thumbnail: ")
    assert "below 0.9" in result.warnings[0] and "left out" in result.warnings[0]
    published = sorted((tmp_path / "out" / "sm").glob("*.dcm"))
    assert published == sorted(result.files)
    numbers, flavors = _numbers_and_flavors(published)
    assert "THUMBNAIL" not in flavors and "VOLUME" in flavors and "OVERVIEW" in flavors
    assert numbers == list(range(1, len(published) + 1)), "renumbered without a gap"


def test_a_privacy_failure_still_refuses_the_slide_whatever_the_thumbnail(
    tmp_path: Path, wrong_render: None
) -> None:
    truth = write_test_slide(
        tmp_path / "raw", slide_name="DOE^JANE 1984", scanner_hardware_id="DOE^JANE 1984"
    )
    with pytest.raises(PublicationRefused) as refused:
        convert_test_slide(truth, tmp_path / "out")
    checks = {p.check for p in refused.value.problems}
    assert "identifiers" in checks and "thumbnail" not in checks
    assert not (tmp_path / "out" / "sm").exists()


def test_a_right_thumbnail_gives_no_warning_and_the_reader_log_names_level_0(
    tmp_path: Path,
) -> None:
    truth = write_test_slide(tmp_path / "raw")
    result = convert_test_slide(truth, tmp_path / "out")
    assert result.warnings == ()
    assert "THUMBNAIL" in _numbers_and_flavors(list(result.files))[1]
    assert result.readers and result.readers[0].level == 0
    assert result.readers[0].direct_reads + result.readers[0].openslide_reads > 0
