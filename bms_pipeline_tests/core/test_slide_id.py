"""BMDeep's slide id `<patient_id>_<n>_bm`: parsed once, and every malformed form refused."""

from __future__ import annotations

import pytest

from bms_pipeline.core.series_numbers import SeriesNumbering
from bms_pipeline.core.slide_id import SlideId, SlideIdError, patient_id_of

PATIENT = "0123456789ABCDEF0123456789ABCDEF"


def test_a_slide_id_round_trips_through_its_parts() -> None:
    slide = SlideId.parse(f"{PATIENT}_2_bm")
    assert (slide.patient_id, slide.number) == (PATIENT, 2)
    assert str(slide) == f"{PATIENT}_2_bm"
    assert patient_id_of(f"{PATIENT}_2_bm") == PATIENT


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"{PATIENT}_1", "not of the form"),
        (f"{PATIENT}_x_bm", "not of the form"),
        (f"{PATIENT}_1_he", "not of the form"),
        (f"{PATIENT.lower()}_1_bm", "32 upper-case hex"),
        (f"{PATIENT[:-1]}_1_bm", "32 upper-case hex"),
        (f"{PATIENT}_0_bm", "slide number"),
    ],
)
def test_a_malformed_slide_id_is_refused_with_the_id_and_the_reason(text: str, reason: str) -> None:
    with pytest.raises(SlideIdError, match=reason) as raised:
        SlideId.parse(text)
    assert text in str(raised.value)


def test_a_zero_padded_slide_number_is_the_same_slide_number() -> None:
    # Accepted as before (no input refused that was accepted); the number is what counts.
    assert SlideId.parse(f"{PATIENT}_01_bm").number == 1


def test_sm_and_ann_numbers_of_one_slide_come_from_one_scheme() -> None:
    numbering = SeriesNumbering()
    # IDC's numbers for slide 1, with session 0 moved off the ROI series' 33.
    ann = numbering.for_slide(f"{PATIENT}_1_bm", ["rois", "session_0", "session_1", "consensus"])
    sm = numbering.for_slide(f"{PATIENT}_1_bm", ["sm"])["sm"]
    assert sm == 1
    assert ann == {"rois": 33, "session_0": 44, "session_1": 34, "consensus": 42}
    # The second slide of the patient shares the study: every number moves by the stride.
    second = numbering.for_slide(SlideId(PATIENT, 2), ["sm", "rois", "session_0"])
    assert second == {"sm": 101, "rois": 133, "session_0": 144}
    assert len({sm, *ann.values()}) == 5
