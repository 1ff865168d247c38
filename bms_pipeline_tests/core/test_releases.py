"""Releases: a change is a numbered release; a revision keeps its place's first release."""

from __future__ import annotations

from bms_pipeline.core.releases import Ledger, PublishedSeries, record_release, release_tables


def _series(uid: str, slide: str = "A_1_bm", role: str = "sm") -> PublishedSeries:
    return PublishedSeries(
        uid, "study", slide[:1], "SM" if role == "sm" else "ANN", slide, role, 1.0
    )


def test_nothing_changed_records_no_release() -> None:
    first = record_release(Ledger(), [_series("1")], {"clinical": "x"}, "c", "2026-01-01")
    assert first.last == 1
    again = record_release(first, [_series("1")], {"clinical": "x"}, "c", "2026-01-02")
    assert again is first


def test_a_new_uid_in_the_same_place_is_a_revision_and_a_missing_place_a_removal() -> None:
    first = record_release(
        Ledger(),
        [_series("1"), _series("2", role="ann/rois"), _series("3", slide="B_1_bm")],
        {},
        "c",
        "d1",
    )
    second = record_release(first, [_series("1"), _series("4", role="ann/rois")], {}, "c", "d2")
    release = second.releases[-1]
    assert (release.number, release.added, release.revised, release.removed) == (2, 0, 1, 1)
    assert second.current["4"].init_release == 1 and second.current["4"].revised_release == 2
    prior = {p.series.series_uid: p for p in second.prior}
    assert prior["2"].superseded_by == "4" and prior["3"].superseded_by is None
    assert (prior["2"].min_release, prior["2"].max_release) == (1, 1)
    tables = release_tables(Ledger.from_json(second.to_json()), "coll")
    assert tables["bms_prior_versions_index"].height == 2
    assert tables["bms_releases"]["release"].to_list() == [1, 2]


def test_a_table_change_alone_is_a_release() -> None:
    first = record_release(Ledger(), [_series("1")], {"clinical": "x"}, "c", "d1")
    second = record_release(first, [_series("1")], {"clinical": "y"}, "c", "d2")
    assert second.last == 2 and second.releases[-1].tables_changed == ("clinical",)
