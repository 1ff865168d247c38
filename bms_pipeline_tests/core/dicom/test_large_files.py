"""Paths only a real-size slide reaches, tested without writing gigabytes (issue 29).

A full BMDeep slide gives a level-0 DICOM file of over 4 GiB (frames found through the
Extended Offset Table, 64-bit offsets) and a MIRAX source of 15 GB+ in many Data files whose
offsets are 32-bit. Here a sparse file stands in for the DICOM: its header and frames are
real, and one filler frame of almost 4 GiB (a hole, no disk) puts the last frame past 4 GiB.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from PIL import Image

from bms_pipeline.core.dicom.determinism import normalize_series
from bms_pipeline.core.dicom.phi import PrivacyPolicy
from bms_pipeline.core.synthetic.mirax_writer import _DataFiles
from bms_pipeline_tests.helpers import write_test_slide
from bms_pipeline_tests.sparse_dicom import NEEDLE, write_sparse_sm


@pytest.fixture
def big_dicom(tmp_path: Path) -> tuple[Path, bytes, int]:
    """A sparse > 4 GiB SM-like file: frames 16 px, the last one past 4 GiB, found through
    the EOT. Returns the path, the last frame's bytes and the file offset of that frame."""
    sparse = write_sparse_sm(tmp_path / "level0.dcm")
    path, last, at = sparse.path, sparse.last, sparse.last_at
    assert at > 2**32 and path.stat().st_size > 2**32
    return path, last, at


def test_eot_offsets_past_4_gib_locate_the_last_frame(big_dicom) -> None:
    path, last, at = big_dicom
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    offsets = struct.unpack("<3Q", ds.ExtendedOffsetTable)
    assert offsets[2] > 2**32  # a Basic Offset Table (32-bit) could not hold it
    with open(path, "rb") as handle:
        handle.seek(at)
        assert handle.read(len(last)) == last
    frame = np.asarray(Image.open(io.BytesIO(last)))
    assert abs(int(frame.mean()) - 200) <= 2


def test_header_normalisation_rewrites_in_place_a_file_over_4_gib(big_dicom) -> None:
    path, last, at = big_dicom
    size = path.stat().st_size
    normalize_series([path])
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.InstanceNumber == 1
    assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == ("20190314", "092653")
    assert path.stat().st_size == size
    with open(path, "rb") as handle:
        handle.seek(at)
        assert handle.read(len(last)) == last


def test_privacy_scan_reports_a_needle_past_4_gib_at_its_offset(big_dicom) -> None:
    path, last, at = big_dicom
    policy = PrivacyPolicy.for_slide({"mirax.GENERAL.SLIDE_NAME": NEEDLE})
    hits = policy.scan([path])
    assert [(h.name, h.offset) for h in hits] == [
        ("mirax.GENERAL.SLIDE_NAME", at + last.index(NEEDLE.encode()))
    ]
    assert hits[0].offset > 2**32


def test_mirax_data_files_roll_over_before_the_int32_offset_limit(tmp_path: Path) -> None:
    """Every blob lies whole in one Data file below the cap, or is refused; the cap never
    exceeds what a 32-bit signed offset can address, whatever is asked."""
    files = _DataFiles(tmp_path, "x" * 8, max_bytes=1 << 40)
    assert files._max_bytes == 2**31 - 1  # noqa: SLF001 - the rule under test
    files.close()
    folder = tmp_path / "small"
    folder.mkdir()
    files = _DataFiles(folder, "x" * 8, max_bytes=1000)
    placed = [files.append(bytes([i]) * (100 + 37 * i)) for i in range(16)]
    with pytest.raises(ValueError, match="does not fit in a data file of at most 1000 bytes"):
        files.append(b"\1" * 900)  # with the file header, even a fresh file is too small
    files.close()
    for i, (offset, length, fileno) in enumerate(placed):
        data = (folder / files.names[fileno]).read_bytes()
        assert len(data) <= 1000
        assert data[offset : offset + length] == bytes([i]) * length
    assert len(files.names) > 3


def test_a_slide_split_over_many_data_files_reads_as_one_in_a_single_file(
    tmp_path: Path,
) -> None:
    one = write_test_slide(tmp_path / "one", image_format="JPEG")
    many = write_test_slide(tmp_path / "many", image_format="JPEG", max_datafile_bytes=60_000)
    assert len(list(many.mrxs_path.with_suffix("").glob("Data*.dat"))) > 3
    assert all(f.stat().st_size <= 60_000 for f in many.mrxs_path.with_suffix("").glob("Data*.dat"))
    x, y, w, h = one.bounds
    with (
        openslide.OpenSlide(str(one.mrxs_path)) as a,
        openslide.OpenSlide(str(many.mrxs_path)) as b,
    ):
        for level in range(a.level_count):
            f = 2**level
            np.testing.assert_array_equal(
                np.asarray(a.read_region((x, y), level, (w // f, h // f))),
                np.asarray(b.read_region((x, y), level, (w // f, h // f))),
            )


def test_frame_one_of_a_file_past_4_gib_is_read_without_its_pixel_data(tmp_path: Path) -> None:
    """The DICOMweb check of frame 1 reads the header and the frame only: on a 4.3 GB file
    reading the pixel data whole would take gigabytes of memory."""
    from bms_pipeline.core.dicomweb.streaming import StowBody, first_frame_of_file

    sparse = write_sparse_sm(tmp_path / "level0.dcm")
    assert first_frame_of_file(sparse.path) == sparse.first
    body = StowBody(sparse.path)
    assert len(body) == sparse.path.stat().st_size + len(body.head) + len(body.tail)
    pieces = iter(body)
    assert next(pieces) == body.head
    assert next(pieces)[128:132] == b"DICM"
