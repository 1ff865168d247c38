"""What the Dagster UI shows of a converted slide: pictures decoded from the published files,
kept in the instance by `bms-pipeline run` (the shared two-process CLI fixture), and the
collection page the collection assets wrote."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

from bms_pipeline.core.dicom.thumbnail import correlation
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.qc.pictures import thumbnail_picture
from bms_pipeline_tests.conftest import ConvertedRoot
from bms_pipeline_tests.static_page import open_page

DATA_URI = re.compile(r"\(data:(image/(?:jpeg|png));base64,([A-Za-z0-9+/=]+)\)")


def _pictures(markdown: object) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        for _, data in DATA_URI.findall(str(markdown))
    ]


def _latest(instance: dg.DagsterInstance, asset: str, slide_id: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[slide_id] if slide_id else None
        ),
        limit=1,
    ).records
    assert records, asset
    materialization = records[0].asset_materialization
    assert materialization is not None
    return materialization.metadata


def test_slide_materializations_carry_the_published_pictures(
    cli_converted: ConvertedRoot,
) -> None:
    layout = DataLayout.at(cli_converted.root)
    with dg.DagsterInstance.from_config(str(cli_converted.root / ".dagster")) as instance:
        for slide_id in sorted(p.stem for p in layout.slides_dir.glob("*.mrxs")):
            sm = _latest(instance, "sm_series", slide_id)
            (shown,) = _pictures(sm["thumbnail"].value)
            published = thumbnail_picture(sorted(layout.sm_dir(slide_id).glob("*.dcm")))
            assert shown.shape == published.shape
            assert correlation(shown, published) > 0.98
            ann = _latest(instance, "ann_series", slide_id)
            (region,) = _pictures(ann["boxes_on_the_slide"].value)
            (chart,) = _pictures(ann["boxes_per_label"].value)
            assert max(region.shape[:2]) == 512 and chart.shape[0] > 15
            assert "box(es)" in str(ann["boxes_on_the_slide"].value)
        page = _latest(instance, "collection_page")
    assert page["slides"].value == len(list(layout.slides_dir.glob("*.mrxs")))
    assert Path(str(page["path"].value)) == layout.out / "qc" / "index.html"
    assert page["url"].value == (layout.out / "qc" / "index.html").as_uri()


def test_thumbnail_check_shows_the_two_images_it_compared(cli_converted: ConvertedRoot) -> None:
    with dg.DagsterInstance.from_config(str(cli_converted.root / ".dagster")) as instance:
        evaluations = [
            record.event_log_entry.dagster_event.asset_check_evaluation_data
            for run_id in instance.get_run_ids()
            for record in instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            ).records
            if record.event_log_entry.dagster_event is not None
        ]
    thumbnail_checks = [
        e for e in evaluations if e.check_name == "sm_series_thumbnail_matches_pyramid"
    ]
    assert thumbnail_checks
    for evaluation in thumbnail_checks:
        markdown = str(evaluation.metadata["pictures"].value)
        thumbnail, level = _pictures(markdown)
        assert "**THUMBNAIL**" in markdown and "**the level it is compared with**" in markdown
        assert correlation(thumbnail, level) > 0.9


def test_collection_page_lists_every_slide_in_chromium(
    cli_converted: ConvertedRoot, tmp_path: Path
) -> None:
    layout = DataLayout.at(cli_converted.root)
    slides = sorted(p.stem for p in layout.slides_dir.glob("*.mrxs"))
    seen = open_page(layout.out / "qc" / "index.html", tmp_path, "cli-collection-page.png")
    assert seen["problems"] == []
    assert [r["slide"] for r in seen["rows"]] == slides
    assert all(
        r["image"] and r["image"]["loaded"] and r["image"]["width"] > 0 for r in seen["rows"]
    )
