"""The privacy policy: what counts as a leak, what the output carries on purpose, and a
byte scan that finds a needle wherever it lies in a file (chunk boundaries included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bms_pipeline.core.dicom import phi
from bms_pipeline.core.dicom.phi import PrivacyPolicy, scan_date_forms

SLIDE_ID = "0123456789ABCDEF0123456789ABCDEF_1_bm"
PATIENT_ID = SLIDE_ID[:32]
CARRIED = [SLIDE_ID, PATIENT_ID, "bonemarrowwsi_pediatricleukemia"]


def _properties(**general: str) -> dict[str, str]:
    return {f"mirax.GENERAL.{k}": v for k, v in general.items()}


def test_a_slide_name_equal_to_the_slide_id_is_carried_not_leaked(tmp_path: Path) -> None:
    policy = PrivacyPolicy.for_slide(
        _properties(SLIDE_ID="5e1f0d2c-4b7a", SLIDE_NAME=SLIDE_ID), CARRIED
    )
    assert "mirax.GENERAL.SLIDE_NAME" in policy.excused
    assert "mirax.GENERAL.SLIDE_NAME" not in policy.names
    output = tmp_path / "a.dcm"
    output.write_bytes(b"\0" * 100 + SLIDE_ID.encode() + b"\0" * 100)
    assert policy.scan([output]) == []


def test_a_property_that_is_part_of_a_carried_value_is_excused_only_inside_it(
    tmp_path: Path,
) -> None:
    """SLIDE_NAME `..._1_bm` shortened to the patient id plus `_1`: inside the slide id
    (ContainerIdentifier) it is no leak, alone it is one."""
    needle = SLIDE_ID[:34]
    policy = PrivacyPolicy.for_slide(_properties(SLIDE_NAME=needle), [SLIDE_ID])
    inside = tmp_path / "inside.dcm"
    inside.write_bytes(b"xx" + SLIDE_ID.encode() + b"yy")
    alone = tmp_path / "alone.dcm"
    alone.write_bytes(b"x" * 7 + SLIDE_ID.encode() + b"--" + needle.encode() + b"zz")
    assert policy.scan([inside]) == []
    (hit,) = policy.scan([alone])
    assert hit.name == "mirax.GENERAL.SLIDE_NAME"
    assert hit.offset == 7 + len(SLIDE_ID) + 2


def test_scan_date_is_searched_in_mirax_da_and_dt_forms(tmp_path: Path) -> None:
    forms = scan_date_forms("14/03/2019 09:26:53")
    assert set(forms.values()) == {"14/03/2019 09:26:53", "20190314", "20190314092653"}
    policy = PrivacyPolicy.for_slide(_properties(SLIDE_CREATIONDATETIME="14/03/2019 09:26:53"))
    dated = tmp_path / "overview.dcm"
    dated.write_bytes(b"\x08\x00\x23\x00DA\x08\x0020190314")  # ContentDate
    (hit,) = policy.scan([dated])
    assert hit.name == "mirax.GENERAL.SLIDE_CREATIONDATETIME (DA)"
    kept = PrivacyPolicy.for_slide(
        _properties(SLIDE_CREATIONDATETIME="14/03/2019 09:26:53"), keep_dates=True
    )
    assert kept.scan([dated]) == []


def test_hits_never_contain_the_value(tmp_path: Path) -> None:
    name = "Doe^Jane 1984"
    policy = PrivacyPolicy.for_slide(_properties(SLIDE_NAME=name))
    leaky = tmp_path / "leaky.dcm"
    leaky.write_bytes(b"..." + name.encode())
    (hit,) = policy.scan([leaky])
    assert name not in hit.describe()
    assert f"{tmp_path.name}/leaky.dcm: byte 3" in hit.describe()


def test_allow_listed_scanner_properties_are_not_scanned() -> None:
    policy = PrivacyPolicy.for_slide(
        _properties(
            SCANNER_HARDWARE_VERSION="Pannoramic 250 Flash III",
            OBJECTIVE_NAME="Plan-Apochromat 40x",
        )
    )
    assert policy.names == ["mirax.GENERAL.OBJECTIVE_NAME"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.integers(0, 300),
    chunk=st.integers(16, 64),
    carried_around=st.booleans(),
    needle=st.sampled_from(["Doe^Jane", SLIDE_ID[:34], "KM 2019-0042"]),
)
def test_scan_finds_or_excuses_a_needle_wherever_the_chunks_fall(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: int,
    chunk: int,
    carried_around: bool,
    needle: str,
) -> None:
    """Tiny chunks put every needle and carried value across a chunk boundary somewhere."""
    monkeypatch.setattr(phi, "_CHUNK", chunk)
    policy = PrivacyPolicy.for_slide(_properties(SLIDE_NAME=needle), [SLIDE_ID])
    planted = SLIDE_ID if carried_around and SLIDE_ID.startswith(needle) else needle
    data = b"\x01" * before + planted.encode() + b"\x02" * 50
    path = tmp_path / f"f{before}-{chunk}.dcm"
    path.write_bytes(data)
    hits = policy.scan([path])
    if planted == SLIDE_ID:
        assert hits == []
    else:
        assert [(h.name, h.offset) for h in hits] == [("mirax.GENERAL.SLIDE_NAME", before)]


def test_what_the_policy_strips_is_what_wsidicomizer_would_carry_from_the_file() -> None:
    """wsidicomizer turns SLIDE_NAME into SeriesDescription and SLIDE_ID into
    ContainerIdentifier, keeps the label's text and the study's scan date: all gone."""
    from datetime import date, datetime, time

    from wsidicom.metadata import Image, Label, Pyramid, Series, Slide, Study
    from wsidicomizer.metadata import WsiDicomizerMetadata

    scanned = datetime(2019, 3, 14, 9, 26, 53)
    metadata = WsiDicomizerMetadata(
        study=Study(date=date(2019, 3, 14), time=time(9, 26, 53)),
        series=Series(description="MUSTERMANN Erika"),
        slide=Slide(identifier="5e1f0d2c-4b7a"),
        label=Label(text="MUSTERMANN, Erika", barcode="KM-2019-17"),
        pyramid=Pyramid(image=Image(acquisition_datetime=scanned), optical_paths=[]),
    )
    stripped = phi.strip_identifying_metadata(metadata, keep_dates=False)
    assert stripped.series.description is None
    assert stripped.slide.identifier is None
    assert (stripped.label.text, stripped.label.barcode) == (None, None)
    assert (stripped.study.date, stripped.study.time) == (None, None)
    assert stripped.pyramid.image.acquisition_datetime is None
    kept = phi.strip_identifying_metadata(metadata, keep_dates=True)
    assert kept.pyramid.image.acquisition_datetime == scanned
    assert kept.slide.identifier is None


PLANTED_GENERAL = {
    "SLIDE_BARCODE": "Zwetschgenbaum Adelheid",
    "PROJECT_NAME": "Quirinus Obermaier",
    "SLIDE_LABEL": "Waltraud Kniebeuger",
    "SLIDE_QUALITY": "Hildegunde Prachtl",
    "SLIDE_COMMENT": "Bartholomae Ziegenspeck",
    "COMMENT": "Eusebius Wurzelsepp",
}


def test_the_ui_shows_exactly_the_properties_that_may_reach_the_dicom() -> None:
    """An allow-list, not a deny-list: names planted in properties real 3DHISTECH slides
    carry (and in a property no one has heard of) are not shown, nor the identifiers."""
    properties = _properties(
        SLIDE_ID="5e1f0d2c-4b7a",
        SLIDE_NAME="MUSTERMANN",
        SLIDE_CREATIONDATETIME="14/03/2019",
        SCANNER_HARDWARE_VERSION="Pannoramic 250 Flash III",
        NEVER_SEEN_BEFORE="Kunigunde Holzapfel",
        **PLANTED_GENERAL,
    ) | {"openslide.mpp-x": "0.11", "openslide.comment": "Eusebius", "mirax.X.Y": "Z"}
    shown = phi.shown_properties(properties)
    assert shown == {
        "mirax.GENERAL.SCANNER_HARDWARE_VERSION": "Pannoramic 250 Flash III",
        "openslide.mpp-x": "0.11",
    }
    assert set(shown) <= phi.ALLOWED_MIRAX_PROPERTIES
    assert shown == phi.allowed_properties(properties)


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
def test_a_bare_needle_after_many_carried_copies_is_found_at_its_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """The slide id is carried on purpose and contains the needle; each copy is excused, in
    every chunk, and the one bare occurrence far behind them is still reported."""
    monkeypatch.setattr(phi, "_CHUNK", chunk)
    needle = SLIDE_ID[:12]
    policy = PrivacyPolicy.for_slide(_properties(SLIDE_NAME=needle), [SLIDE_ID])
    carried = (b"\x00" * 37 + SLIDE_ID.encode()) * 40
    data = carried + b"\x03" * 1000 + needle.encode() + b"\x04" * 10
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    hits = policy.scan([path])
    assert [(h.name, h.offset) for h in hits] == [("mirax.GENERAL.SLIDE_NAME", len(carried) + 1000)]
    path.write_bytes(carried)
    assert policy.scan([path]) == []


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_many_needles_take_one_pass_and_find_what_one_pass_per_needle_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """A collection's needles (the audit's) go through Aho-Corasick: every needle present is
    found at its first unexcused offset, high bytes and chunk boundaries included."""
    monkeypatch.setattr(phi, "_CHUNK", chunk)
    names = [f"Patient Name {i:03d}".encode() for i in range(phi.MANY_NEEDLES + 8)]
    names[5] = b"\xff\xfeBinary\x00Needle\x80"
    needles = tuple(phi.Needle(f"n{i}", v) for i, v in enumerate(names))
    data = bytearray(b"\x00\x9c" * 500)
    expected = []
    for i in (0, 5, 17, len(names) - 1):
        expected.append((f"n{i}", len(data)))
        data += names[i] + b"\xd8" * (13 + i)
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(data))
    many = PrivacyPolicy(needles).scan([path])
    few = [h for n in needles for h in PrivacyPolicy((n,)).scan([path])]
    assert sorted((h.name, h.offset) for h in many) == sorted(expected)
    assert sorted((h.name, h.offset) for h in few) == sorted(expected)
