"""Completeness checks name the file and the reason; the content hash tracks content."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from bms_pipeline.core.mirax.inventory import (
    SlideError,
    check_complete,
    find_unreadable_images,
    inventory,
    openslide_properties,
)
from bms_pipeline_tests.helpers import write_test_slide


@pytest.fixture()
def slide(tmp_path: Path) -> Path:
    return write_test_slide(tmp_path).mrxs_path


def test_complete_slide_lists_every_file_with_sha256(slide: Path) -> None:
    inv = inventory(slide)
    names = {f.relative_path for f in inv.files}
    folder = slide.stem
    assert f"{slide.name}" in names
    assert f"{folder}/Slidedat.ini" in names and f"{folder}/Index.dat" in names
    assert {n for n in names if n.endswith(".dat") and "Data" in n} == {
        f"{folder}/{p.name}" for p in slide.with_suffix("").glob("Data*.dat")
    }
    assert all(len(f.sha256) == 64 for f in inv.files)


def test_each_file_keeps_its_own_hash_when_hashed_on_several_threads(slide: Path) -> None:
    inv = inventory(slide)
    root = slide.parent
    assert len(inv.files) >= 4, "enough files for the threads to interleave"
    for entry in inv.files:
        data = (root / entry.relative_path).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest(), entry.relative_path
        assert entry.size == len(data)


def test_missing_index_is_named(slide: Path) -> None:
    (slide.with_suffix("") / "Index.dat").unlink()
    with pytest.raises(SlideError, match=r"Index\.dat.*missing"):
        check_complete(slide)


def test_truncated_data_file_is_named(slide: Path) -> None:
    datafile = min(slide.with_suffix("").glob("Data*.dat"))
    data = datafile.read_bytes()
    datafile.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match=rf"{datafile.name}.*truncated"):
        check_complete(slide)


def test_missing_mrxs_or_folder_is_named(slide: Path, tmp_path: Path) -> None:
    shutil.rmtree(slide.with_suffix(""))
    with pytest.raises(SlideError, match="slide folder"):
        check_complete(slide)
    with pytest.raises(SlideError, match=r"\.mrxs file does not exist"):
        check_complete(tmp_path / "nothing.mrxs")


def test_content_hash_changes_with_one_byte(slide: Path) -> None:
    before = inventory(slide).content_hash
    assert inventory(slide).content_hash == before
    datafile = max(slide.with_suffix("").glob("Data*.dat"))
    data = bytearray(datafile.read_bytes())
    data[-1] ^= 0xFF
    datafile.write_bytes(bytes(data))
    assert inventory(slide).content_hash != before


def test_unreadable_tile_is_named_by_level_position_and_file(tmp_path: Path) -> None:
    truth = write_test_slide(tmp_path, image_format="JPEG")
    datafile = min(truth.mrxs_path.with_suffix("").glob("Data*.dat"))
    data = bytearray(datafile.read_bytes())
    data[2000:2400] = b"\xff" * 400  # inside the first stored image, after the file header
    datafile.write_bytes(bytes(data))
    check_complete(truth.mrxs_path)  # still complete: every byte is there
    (problem,) = find_unreadable_images(truth.mrxs_path)
    assert problem.startswith("level 0 image (x=") and datafile.name in problem


def test_openslide_properties_follow_every_change_of_the_slide_files(slide: Path) -> None:
    """The properties are kept between a slide's steps, never past a change of any of its
    files, and no caller can change what the next one gets."""
    first = openslide_properties(slide)
    objective = first["mirax.GENERAL.OBJECTIVE_NAME"]
    first["mirax.GENERAL.OBJECTIVE_NAME"] = "changed by a caller"
    second = openslide_properties(slide)
    assert second["mirax.GENERAL.OBJECTIVE_NAME"] == objective
    second["mirax.GENERAL.OBJECTIVE_NAME"] = "changed by another caller"
    assert openslide_properties(slide)["mirax.GENERAL.OBJECTIVE_NAME"] == objective
    # The same number of bytes, a later modification time: only the time tells.
    slidedat = slide.with_suffix("") / "Slidedat.ini"
    text = slidedat.read_bytes()
    renamed = objective[:-1] + ("X" if objective[-1] != "X" else "Y")
    before = slidedat.stat()
    slidedat.write_bytes(text.replace(objective.encode(), renamed.encode(), 1))
    os.utime(slidedat, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert openslide_properties(slide)["mirax.GENERAL.OBJECTIVE_NAME"] == renamed
    # A file OpenSlide needs, gone: an error every time, never the kept properties.
    index = slide.with_suffix("") / "Index.dat"
    index.rename(index.with_name("Index.moved"))
    for _ in range(2):
        with pytest.raises(SlideError, match="OpenSlide cannot open"):
            openslide_properties(slide)
