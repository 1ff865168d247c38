"""BMDeep's slide identifier, `<patient_id>_<n>_bm`, parsed in one place.

IDC names every slide after its patient (32 upper-case hex characters, the de-identified
patient id of the clinical table) and its number among the patient's slides (1, 2, ...):
`<patient_id>_<n>_bm`. The patient id keys the clinical rows, the study and the DICOM
PatientID; the number offsets the slide's SeriesNumbers within the patient's one study.

The number is ASCII digits only: Python's `isdigit` and `int` also take Arabic-Indic (`٣`)
or full-width digits, and `isdigit` superscripts (`²`, which `int` then refuses), so such a
file name would have become slide 3 or a crash. A zero-padded number (`_01_`) is accepted
as the same number; two spellings of one slide side by side are refused where the slides
are listed (`core.mirax.discovery`).
"""

from __future__ import annotations

from dataclasses import dataclass

_HEX = frozenset("0123456789ABCDEF")
_DIGITS = frozenset("0123456789")


class SlideIdError(ValueError):
    """A slide id that is not of BMDeep's form; the message names the id and the reason."""


@dataclass(frozen=True, order=True)
class SlideId:
    patient_id: str
    number: int

    def __post_init__(self) -> None:
        if len(self.patient_id) != 32 or not set(self.patient_id) <= _HEX:
            raise SlideIdError(f"slide id {self}: patient id must be 32 upper-case hex characters")
        if self.number < 1:
            raise SlideIdError(f"slide id {self}: slide number must be 1 or more")

    @classmethod
    def parse(cls, text: str) -> SlideId:
        """`<patient_id>_<n>_bm` -> SlideId; a clear error for anything else."""
        parts = text.split("_")
        if len(parts) != 3 or parts[2] != "bm" or not parts[1].isdigit():
            raise SlideIdError(f"slide id {text!r} is not of the form <patient_id>_<n>_bm")
        if not set(parts[1]) <= _DIGITS:
            raise SlideIdError(
                f"slide id {text!r}: the slide number {parts[1]!r} must be ASCII digits 0-9 "
                f"(it holds {', '.join(sorted(f'U+{ord(c):04X}' for c in set(parts[1]) - _DIGITS))})"
            )
        return cls(parts[0], int(parts[1]))  # checked on construction

    def __str__(self) -> str:
        return f"{self.patient_id}_{self.number}_bm"


def patient_id_of(slide_id: str) -> str:
    """The patient of a slide id string (raises SlideIdError for a malformed one)."""
    return SlideId.parse(slide_id).patient_id
