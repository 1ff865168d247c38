"""The one decision of what needs a run: exact assets, reasons, resting failures."""

from __future__ import annotations

from bms_pipeline.core.run_decision import (
    Attempt,
    SlideFacts,
    decide_collection,
    decide_slide,
    slides_to_withdraw,
)
from bms_pipeline.core.versions import InputVersion

ORDER = ["mrxs_slide", "sm_series", "ann_series", "dicom_validation"]


def _versions(**changes: str) -> dict[str, InputVersion]:
    sm = InputVersion({"slide files": "a", "clinical.csv (patient row)": changes.get("row", "r")})
    ann = InputVersion({"sm_series": sm.digest, "cells.csv": changes.get("cells", "c")})
    val = InputVersion({"sm_series": sm.digest, "ann_series": ann.digest})
    return {"sm_series": sm, "ann_series": ann, "dicom_validation": val}


def _published(versions: dict[str, InputVersion]) -> dict[str, dict[str, str] | None]:
    return {a: dict(v.parts) for a, v in versions.items()}


def _facts(current, published, failure=None) -> SlideFacts:
    return SlideFacts(
        "S_1_bm",
        True,
        inventoried=True,
        current=current,
        published=published,
        last_failure=failure,
    )


def test_an_up_to_date_slide_needs_nothing() -> None:
    v = _versions()
    decision = decide_slide(_facts(v, _published(v)), ORDER)
    assert decision.state == "up-to-date" and not decision.needs_run


def test_an_annotation_edit_reruns_the_annotations_and_what_follows_only() -> None:
    before = _versions()
    decision = decide_slide(_facts(_versions(cells="moved"), _published(before)), ORDER)
    assert decision.assets == ("ann_series", "dicom_validation")
    assert decision.why["ann_series"] == "cells.csv changed"


def test_a_clinical_row_edit_reconverts_the_slide() -> None:
    before = _versions()
    decision = decide_slide(_facts(_versions(row="male"), _published(before)), ORDER)
    assert decision.assets == ("sm_series", "ann_series", "dicom_validation")
    assert "clinical.csv (patient row)" in decision.why["sm_series"]


def test_a_refused_slide_rests_until_an_input_it_saw_changes() -> None:
    v = _versions()
    never = {a: None for a in v}
    # The run also tagged the inventory it started with (as every slide run does).
    attempted = {"mrxs_slide": "sig", "sm_series": v["sm_series"].digest}
    refusal = Attempt(attempted, "not published", refused=True)
    resting = decide_slide(_facts(v, never, refusal), ORDER)
    assert resting.state == "refused" and not resting.needs_run
    # An input of the annotations only: the image would be refused again.
    ann_only = _versions(cells="moved")
    assert decide_slide(_facts(ann_only, never, refusal), ORDER).state == "refused"
    # An input of the image: tried again.
    changed = decide_slide(_facts(_versions(row="male"), never, refusal), ORDER)
    assert changed.state == "stale" and changed.assets[0] == "sm_series"


def test_a_run_whose_process_died_is_no_verdict() -> None:
    v = _versions()
    died = Attempt({"sm_series": v["sm_series"].digest}, "gone", retriable=True)
    decision = decide_slide(_facts(v, {a: None for a in v}, died), ORDER)
    assert decision.needs_run and decision.assets[0] == "sm_series"


def test_new_changed_skipped_and_not_ready_slides() -> None:
    assert decide_slide(SlideFacts("S", True), ORDER).assets == tuple(ORDER)
    changed = SlideFacts("S", True, inventoried=True, files_changed=True)
    assert decide_slide(changed, ORDER).assets == ("mrxs_slide",)
    skipped = decide_slide(SlideFacts("S", True, skip_reason="duplicate scan"), ORDER)
    assert skipped.state == "skipped" and not skipped.needs_run
    assert decide_slide(SlideFacts("S", False, "incomplete"), ORDER).state == "not-ready"


def test_the_same_inputs_give_the_same_request_key_and_other_inputs_another() -> None:
    before = _versions()
    a = decide_slide(_facts(_versions(cells="x"), _published(before)), ORDER)
    b = decide_slide(_facts(_versions(cells="x"), _published(before)), ORDER)
    c = decide_slide(_facts(_versions(cells="y"), _published(before)), ORDER)
    assert a.version_key == b.version_key != c.version_key


def test_the_collection_follows_the_same_rules() -> None:
    now = {"clinical_tables": InputVersion({"clinical.csv": "2"})}
    decision = decide_collection(now, {"clinical_tables": {"clinical.csv": "1"}})
    assert decision.assets == ("clinical_tables",)
    same = decide_collection(now, {"clinical_tables": {"clinical.csv": "2"}})
    assert not same.needs_run


def test_withdrawn_are_the_published_slides_removed_renamed_or_skipped() -> None:
    withdrawn = slides_to_withdraw({"A", "B", "C"}, {"A", "C", "D"}, {"C": "duplicate scan"})
    assert set(withdrawn) == {"B", "C"}
    assert "skipped" in withdrawn["C"] and "raw/slides" in withdrawn["B"]


def test_a_slide_whose_inventory_failed_rests_until_its_files_change() -> None:
    failed = Attempt({"mrxs_slide": "sig-1"}, "mrxs_slide: OpenSlide cannot open it")
    same = SlideFacts("S", True, last_failure=failed, signature="sig-1")
    assert decide_slide(same, ORDER).state == "failed"
    assert not decide_slide(same, ORDER).needs_run
    other = SlideFacts("S", True, last_failure=failed, signature="sig-2")
    assert decide_slide(other, ORDER).state == "new"


def test_the_collection_follows_a_run_when_a_slide_was_ready_or_withdrawn() -> None:
    from bms_pipeline.core.run_decision import collection_build_due

    assert collection_build_due(any_slide_ready=True, any_withdrawn=False)
    assert collection_build_due(any_slide_ready=False, any_withdrawn=True)
    # Only slides not ready (or skipped) and nothing withdrawn: the tables' inputs are as
    # they were, nothing to build.
    assert not collection_build_due(any_slide_ready=False, any_withdrawn=False)
