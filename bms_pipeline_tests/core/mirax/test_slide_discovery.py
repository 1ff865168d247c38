"""Which slides under raw/slides are ready: a bad name, a second spelling of one slide, a
symlink loop or a link out of the data root hold back only that slide, with a reason that
names the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bms_pipeline.core.mirax.discovery import scan_slides
from bms_pipeline.core.slide_id import SlideId, SlideIdError
from bms_pipeline_tests.helpers import PATIENT, write_test_slide

OTHER = "FEDCBA9876543210FEDCBA9876543210"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small complete slide, copied under any name by `_place`."""
    return write_test_slide(tmp_path_factory.mktemp("template"), slide_id=f"{OTHER}_1_bm").mrxs_path


def _place(template: Path, slides: Path, slide_id: str) -> Path:
    slides.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, slides / f"{slide_id}.mrxs")
    shutil.copytree(template.with_suffix(""), slides / slide_id)
    return slides / f"{slide_id}.mrxs"


def _by_id(slides: Path) -> dict[str, tuple[bool, str]]:
    return {s.slide_id: (s.ready, s.reason) for s in scan_slides(slides)}


@pytest.mark.parametrize(
    ("number", "codepoint"),
    [("\u0663", "U+0663"), ("1\u00b2", "U+00B2"), ("\uff11", "U+FF11")],
    ids=["arabic-indic", "superscript", "full-width"],
)
def test_a_slide_number_outside_ascii_digits_is_refused_naming_the_file(
    tmp_path: Path, template: Path, number: str, codepoint: str
) -> None:
    with pytest.raises(SlideIdError, match="ASCII digits") as raised:
        SlideId.parse(f"{PATIENT}_{number}_bm")
    assert codepoint in str(raised.value)
    slides = tmp_path / "data" / "raw" / "slides"
    bad = _place(template, slides, f"{PATIENT}_{number}_bm")
    _place(template, slides, f"{OTHER}_1_bm")
    found = _by_id(slides)
    ready, reason = found[bad.stem]
    assert not ready and str(bad) in reason and "ASCII digits" in reason
    assert found[f"{OTHER}_1_bm"] == (True, "")


def test_two_spellings_of_one_slide_number_are_refused_naming_both(
    tmp_path: Path, template: Path
) -> None:
    slides = tmp_path / "data" / "raw" / "slides"
    padded = _place(template, slides, f"{PATIENT}_01_bm")
    plain = _place(template, slides, f"{PATIENT}_1_bm")
    _place(template, slides, f"{PATIENT}_2_bm")
    found = _by_id(slides)
    for path in (padded, plain):
        ready, reason = found[path.stem]
        assert not ready
        assert str(padded) in reason and str(plain) in reason and "spelled 2 ways" in reason
    assert found[f"{PATIENT}_2_bm"] == (True, ""), "the other slides go on"


def test_a_symlink_loop_is_reported_as_a_loop_and_the_scan_goes_on(
    tmp_path: Path, template: Path
) -> None:
    slides = tmp_path / "data" / "raw" / "slides"
    _place(template, slides, f"{OTHER}_1_bm")
    a, b = slides / f"{PATIENT}_1_bm.mrxs", slides / f"{PATIENT}_2_bm.mrxs"
    a.symlink_to(b.name)
    b.symlink_to(a.name)
    folder_loop = _place(template, slides, f"{PATIENT}_3_bm").with_suffix("") / "Index.dat"
    folder_loop.unlink()
    folder_loop.symlink_to(folder_loop.name)
    looped_folder = _place(template, slides, f"{PATIENT}_4_bm").with_suffix("")
    shutil.rmtree(looped_folder)
    looped_folder.symlink_to(looped_folder.name, target_is_directory=True)
    found = _by_id(slides)
    for path in (a, b):
        ready, reason = found[path.stem]
        assert not ready and reason.startswith(f"{path}: a symlink loop")
    ready, reason = found[f"{PATIENT}_3_bm"]
    assert not ready and reason.startswith(f"{folder_loop}: a symlink loop")
    ready, reason = found[f"{PATIENT}_4_bm"]
    assert not ready and reason.startswith(f"{looped_folder}: a symlink loop")
    assert found[f"{OTHER}_1_bm"] == (True, "")


def test_a_slide_linked_from_outside_the_data_root_is_refused_without_naming_the_target(
    tmp_path: Path, template: Path
) -> None:
    outside = tmp_path / "scans" / "Mustermann"
    source = _place(template, outside, f"{PATIENT}_1_bm")
    slides = tmp_path / "data" / "raw" / "slides"
    _place(template, slides, f"{OTHER}_1_bm")
    link = slides / source.name
    link.symlink_to(source)
    (slides / source.stem).symlink_to(source.with_suffix(""), target_is_directory=True)
    found = _by_id(slides)
    ready, reason = found[source.stem]
    assert not ready and reason.startswith(f"{link}: a symlink to outside the data root")
    assert "Mustermann" not in reason
    assert found[f"{OTHER}_1_bm"] == (True, "")


def test_links_inside_the_data_root_and_a_linked_data_root_are_fine(
    tmp_path: Path, template: Path
) -> None:
    real = tmp_path / "real-data"
    archived = _place(template, real / "archive", f"{PATIENT}_1_bm")
    slides = real / "raw" / "slides"
    slides.mkdir(parents=True)
    (slides / archived.name).symlink_to(archived)
    (slides / archived.stem).symlink_to(archived.with_suffix(""), target_is_directory=True)
    linked_root = tmp_path / "data"
    linked_root.symlink_to(real, target_is_directory=True)
    assert _by_id(linked_root / "raw" / "slides") == {f"{PATIENT}_1_bm": (True, "")}
