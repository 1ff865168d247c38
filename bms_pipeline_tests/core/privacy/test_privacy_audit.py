"""The audit's rules without a run: which input values are searched for, which are excused,
and how database cells are searched (raw and inflated; few values or a collection's many)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from bms_pipeline.core.dicom import phi
from bms_pipeline.core.privacy.audit import (
    Deidentification,
    _Finder,
    credential_needles,
    input_needles,
    scan_rows,
)
from bms_pipeline.core.synthetic.demo import write_demo_dataset

SLIDE_ID = "0123456789ABCDEF0123456789ABCDEF_1_bm"


@pytest.mark.parametrize("many", [False, True])
def test_cells_are_searched_raw_and_inflated_and_carried_values_excuse(many: bool) -> None:
    names = [f"Patient Name {i:03d}".encode() for i in range(phi.MANY_NEEDLES + 3 if many else 3)]
    needles = tuple(phi.Needle(f"n{i}", v) for i, v in enumerate(names))
    carried = (b"slide " + names[2] + b" id",)  # n2 only ever occurs inside a carried value
    finder = _Finder(phi.PrivacyPolicy(needles, carried))
    rows = [
        ("events", 1, {"body": b"xx" + names[0], "n": 3}),
        ("events", 2, {"body": zlib.compress(b"{" + names[1] + b"}")}),
        ("events", 3, {"body": b"carried: " + carried[0]}),
        ("events", 4, {"body": "plain text, nothing"}),
    ]
    hits, cells = scan_rows(rows, finder, "db")
    assert cells == 4
    assert sorted(h.describe() for h in hits) == [
        "db, table events, row 1, column body: holds n0",
        "db, table events, row 2, column body (inflated): holds n1",
    ]


def test_credentials_are_searched_for_from_six_characters_and_named_by_their_setting() -> None:
    needles = credential_needles(
        {"--dicomweb-url": "http://al:pw@h/x", "$BMS_DICOMWEB_URL": "http://bob:Secret-42@h/x"},
        {"BMS_DICOMWEB_PASSWORD": "12345", "BMS_DICOMWEB_TOKEN": "tok-abcdef"},
    )
    assert {n.name: n.value for n in needles} == {
        "the user:password of $BMS_DICOMWEB_URL": b"bob:Secret-42",
        "the password of $BMS_DICOMWEB_URL": b"Secret-42",
        "$BMS_DICOMWEB_TOKEN": b"tok-abcdef",
    }


def test_the_rule_leaves_out_short_and_letterless_values_and_values_the_output_carries(
    tmp_path: Path,
) -> None:
    dataset = write_demo_dataset(tmp_path / "data", slides=1, seed=3)
    (slide_id,) = dataset.slides
    layout = dataset.layout
    ini = next(layout.slides_dir.glob("*/Slidedat.ini"))
    text = ini.read_text(encoding="utf-8-sig")
    planted = {
        "SLIDE_QUALITY": "ok",
        "COMMENT": "1",
        "SLIDE_BARCODE": "20190042",  # digits only: the rule's known gap
        "PROJECT_NAME": "bonemarrowwsi_pediatricleukemia",  # the collection's own id
        "SLIDE_LABEL": "Waltraud Kniebeuger",
    }
    lines = "".join(f"{k} = {v}\n" for k, v in planted.items())
    ini.write_text(text.replace("[GENERAL]\n", f"[GENERAL]\n{lines}", 1), encoding="utf-8-sig")
    header, *rows = layout.clinical_csv.read_text(encoding="utf-8-sig").splitlines()
    # per row: short; equal to an allow-listed property the DICOM carries; free text
    scanner = next(
        line.split("=", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("SCANNER_HARDWARE_VERSION")
    )
    assert phi.looks_identifying(scanner)
    extra = [f"{r};ok;{scanner};Kunigunde Holzapfel" for r in rows]
    layout.clinical_csv.write_text(
        "\n".join([header + ";notes;remarks;extra", *extra]) + "\n", encoding="utf-8"
    )
    from bms_pipeline.core.collection import CollectionConfig

    collection = CollectionConfig.load(layout.collection_yaml)
    result = input_needles(
        {slide_id: layout.mrxs(slide_id)},
        collection.carried_values,
        Deidentification(),
        layout.clinical_csv,
        layout.lab_values_xlsx,
        env={},
    )
    values = {n.value.decode() for n in result.policy.needles}
    assert "Waltraud Kniebeuger" in values
    assert not values & {"ok", "1", "20190042", "bonemarrowwsi_pediatricleukemia", scanner}
    assert slide_id not in values  # SLIDE_NAME is the slide id: excused
    assert result.excused >= 3  # SLIDE_NAME, PROJECT_NAME and the scanner cell(s)
    assert "Kunigunde Holzapfel" in values
    assert result.problems == ()


def test_a_digits_only_date_counts_as_a_token_of_its_own_not_inside_hashes_or_timestamps(
    tmp_path: Path,
) -> None:
    """8 digits occur by chance in a large instance's hex hashes and timestamps; the audit
    counts the scan date (DA) only where it stands alone, as a date field would hold it."""
    date = phi.Needle("mirax.GENERAL.SLIDE_CREATIONDATETIME (DA)", b"20190929", whole_token=True)
    policy = phi.PrivacyPolicy((date,))
    chance = b'{"sha256": "ab20190929cd", "timestamp": 1765071014.201909291}'
    path = tmp_path / "events.json"
    path.write_bytes(chance)
    assert policy.scan([path]) == []
    assert scan_rows([("t", 1, {"c": chance})], _Finder(policy), "db") == ([], 1)
    path.write_bytes(chance + b', "StudyDate": "20190929"')
    (hit,) = policy.scan([path])
    assert hit.offset == len(chance) + len(b', "StudyDate": "')
    assert phi.inside_token(chance, 14, date)
