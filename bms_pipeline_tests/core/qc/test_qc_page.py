"""The collection page, built from the index and validation tables of the session's converted
demo collection (the real index builder and dicom3tools), and loaded in headless Chromium."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bms_pipeline.core.annotations.ann import read_back
from bms_pipeline.core.atomic_outputs import atomic_write_parquet
from bms_pipeline.core.index import build_dicom_index
from bms_pipeline.core.index.write import write_dicom_index
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.qc import page as qc_page
from bms_pipeline.core.qc.page import NotPublished, build_collection_page
from bms_pipeline.core.validation.report import combine_slide_results
from bms_pipeline.core.validation.slide import validate_slide
from bms_pipeline_tests.conftest import COLLECTION
from bms_pipeline_tests.pipeline_output import PipelineOutput
from bms_pipeline_tests.static_page import open_page

REFUSED = NotPublished(
    "FEDCBA9876543210FEDCBA9876543210_1_bm",
    "sm_series: publication refused: <b>mirax.GENERAL.SLIDE_NAME</b> found at byte 1234",
)
LEFT_OUT = {"bonemarrowwsi_pediatricleukemia_laboratory": ["00112233445566778899AABBCCDDEEFF"]}


@dataclass(frozen=True)
class Collection:
    layout: DataLayout
    slides: list[str]


@pytest.fixture(scope="module")
def collection(
    pipeline_output: PipelineOutput, tmp_path_factory: pytest.TempPathFactory
) -> Collection:
    """A copy of the converted collection's out/dicom with the tables the collection
    assets write: the DICOM index and every slide's dicom3tools messages."""
    root = tmp_path_factory.mktemp("qc")
    layout = DataLayout.at(root)
    shutil.copytree(pipeline_output.dataset.layout.out / "dicom", layout.out / "dicom")
    index = build_dicom_index(
        layout.out / "dicom", COLLECTION.collection_id, COLLECTION.doi, COLLECTION.license
    )
    write_dicom_index(index, layout)
    slides = sorted(pipeline_output.dataset.slides)
    for slide_id in slides:
        atomic_write_parquet(validate_slide(layout, slide_id), layout.validation_parquet(slide_id))
    atomic_write_parquet(
        combine_slide_results(sorted((layout.out / "validation").glob("*.parquet"))),
        layout.tables_dir / "validation_messages.parquet",
    )
    return Collection(layout, slides)


def test_page_shows_every_slide_with_its_numbers(collection: Collection) -> None:
    out = collection.layout.out
    result = build_collection_page(out, "BMDeep", LEFT_OUT, [REFUSED])
    assert result.path == out / "qc" / "index.html"
    assert result.slides == len(collection.slides) == result.thumbnails_made
    rows = {r.slide_id: r for r in qc_page.slide_rows(out)}
    assert sorted(rows) == collection.slides
    for slide_id, row in rows.items():
        sm = sorted(collection.layout.sm_dir(slide_id).glob("*.dcm"))
        assert row.instances == len(sm) and row.levels == len(sm) - 2  # THUMBNAIL, OVERVIEW
        counts = read_back(collection.layout.ann_dir(slide_id))
        assert dict(row.annotations) == {name: sum(c.values()) for name, c in counts.items()}
        messages = combine_slide_results([collection.layout.validation_parquet(slide_id)])
        assert row.errors == messages.filter(messages["level"] == "Error").height
        assert row.warnings == messages.filter(messages["level"] == "Warning").height
        thumbnail = out / "qc" / "thumbnails" / f"{row.series_instance_uid}.jpg"
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and max(image.size) == 256
        assert thumbnail.stat().st_size < 30_000
    html = result.path.read_text(encoding="utf-8")
    assert "&lt;b&gt;mirax.GENERAL.SLIDE_NAME&lt;/b&gt;" in html and "<b>" not in html


def test_page_loads_in_chromium_and_shows_every_slide(
    collection: Collection, tmp_path: Path
) -> None:
    page = build_collection_page(collection.layout.out, "BMDeep", LEFT_OUT, [REFUSED]).path
    seen = open_page(page, tmp_path, "collection-page.png")
    assert seen["problems"] == []
    assert [r["slide"] for r in seen["rows"]] == collection.slides
    for row in seen["rows"]:
        image = row["image"]
        assert image is not None and image["loaded"] and image["width"] == 256, row
        assert row["slide"] in row["text"]
    assert REFUSED.slide_id in seen["notPublished"]
    assert "publication refused: <b>mirax.GENERAL.SLIDE_NAME</b>" in seen["notPublished"]
    assert "00112233445566778899AABBCCDDEEFF" in seen["leftOut"]


def test_a_rebuild_reuses_thumbnails_and_drops_those_of_replaced_series(
    collection: Collection,
) -> None:
    out = collection.layout.out
    build_collection_page(out, "BMDeep")
    stale = out / "qc" / "thumbnails" / "1.2.3.4.jpg"  # a series no longer published
    stale.write_bytes(b"old")
    again = build_collection_page(out, "BMDeep")
    assert again.thumbnails_made == 0 and again.thumbnails_reused == len(collection.slides)
    assert not stale.exists()
    assert not any((out / ".staging").glob("qc-*"))


def test_a_failed_build_leaves_the_previous_page(
    collection: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = collection.layout.out
    build_collection_page(out, "BMDeep", LEFT_OUT, [REFUSED])
    before = (out / "qc" / "index.html").read_bytes()

    def broken(*_args, **_kwargs) -> str:
        # Injected: a failure in the middle of a build (a full disk, a bug) cannot be made
        # happen on demand otherwise.
        raise OSError("disk full")

    monkeypatch.setattr(qc_page, "render_page", broken)
    with pytest.raises(OSError, match="disk full"):
        build_collection_page(out, "BMDeep")
    assert (out / "qc" / "index.html").read_bytes() == before
    assert len(list((out / "qc" / "thumbnails").glob("*.jpg"))) == len(collection.slides)
    assert not any((out / ".staging").glob("qc-*"))


def test_an_empty_output_root_gives_a_page_with_no_slides(tmp_path: Path) -> None:
    result = build_collection_page(tmp_path, "BMDeep")
    html = result.path.read_text(encoding="utf-8")
    assert result.slides == 0 and "0 slide(s) published" in html
