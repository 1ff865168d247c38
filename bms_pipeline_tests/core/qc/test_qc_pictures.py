"""The pictures of what was published: decoded from the SM and ANN files the pipeline wrote
(the session's converted demo collection), checked against the generator's ground truth."""

from __future__ import annotations

import base64
import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from bms_pipeline.core.annotations.ann import read_back
from bms_pipeline.core.dicom.thumbnail import correlation, total_pixel_matrix
from bms_pipeline.core.qc import pictures as p
from bms_pipeline.core.reference import reference_path
from bms_pipeline.core.synthetic.mirax_writer import MiraxGroundTruth
from bms_pipeline_tests.pipeline_output import PipelineOutput

DATA_URI = re.compile(r"!\[([^\]]*)\]\(data:(image/(?:jpeg|png));base64,([A-Za-z0-9+/=]+)\)")


def _images(markdown: str) -> list[tuple[str, str, Image.Image]]:
    """(alt, mime, image) of every inline image of a markdown text."""
    return [
        (alt, mime, Image.open(io.BytesIO(base64.b64decode(data))))
        for alt, mime, data in DATA_URI.findall(markdown)
    ]


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)


def _display_colours() -> dict[str, tuple[int, int, int]]:
    with reference_path("cell_labels.csv").open(encoding="utf-8", newline="") as fh:
        return {
            row["label"]: tuple(int(row["display_color"][i : i + 2], 16) for i in (1, 3, 5))
            for row in csv.DictReader(fh)
        }  # type: ignore[return-value]


@pytest.fixture(scope="module")
def region(pipeline_output: PipelineOutput) -> p.RegionPicture:
    ann = pipeline_output.dataset.layout.ann_dir(pipeline_output.slide_id)
    return p.region_picture(
        pipeline_output.sm_files,
        p.read_box_groups(ann / "consensus.dcm"),
        p.read_box_groups(ann / "rois.dcm"),
    )


def test_thumbnail_picture_is_the_published_thumbnail_reduced(
    pipeline_output: PipelineOutput,
) -> None:
    files = pipeline_output.sm_files
    picture = p.thumbnail_picture(files)
    (thumbnail,) = [i for i in p.sm_instances(files) if i.flavor == "THUMBNAIL"]
    decoded = total_pixel_matrix(thumbnail.path)  # pydicom's own decoding of the whole
    assert max(picture.shape[:2]) == min(p.THUMBNAIL_SIDE, max(decoded.shape[:2]))
    assert abs(picture.shape[1] / picture.shape[0] - decoded.shape[1] / decoded.shape[0]) < 0.02
    assert correlation(picture, decoded) > 0.98
    # The level the THUMBNAIL check compares it with shows the same slide.
    assert correlation(picture, p.compared_level_picture(files)) > 0.9


def test_thumbnail_markdown_is_a_small_inline_jpeg(pipeline_output: PipelineOutput) -> None:
    markdown = p.thumbnail_markdown(pipeline_output.sm_files)
    ((alt, mime, image),) = _images(markdown)
    assert mime == "image/jpeg" and image.format == "JPEG" and "THUMBNAIL" in alt
    assert max(image.size) == p.THUMBNAIL_SIDE
    assert len(markdown) < 30_000  # a few tens of KB per slide in the Dagster instance


def test_check_markdown_shows_both_compared_images(pipeline_output: PipelineOutput) -> None:
    markdown = p.thumbnail_check_markdown(pipeline_output.sm_files)
    images = _images(markdown)
    assert [alt for alt, _, _ in images] == ["THUMBNAIL", "the level it is compared with"]
    a, b = (np.asarray(img.convert("RGB")) for _, _, img in images)
    assert correlation(a, b) > 0.9


def test_a_series_without_thumbnail_says_so_instead_of_failing(
    pipeline_output: PipelineOutput, tmp_path: Path
) -> None:
    kept = []
    for path in pipeline_output.sm_files:
        if pydicom.dcmread(path, stop_before_pixels=True).ImageType[2] != "THUMBNAIL":
            kept.append(Path(shutil.copy2(path, tmp_path)))
    assert len(kept) == len(pipeline_output.sm_files) - 1
    assert p.thumbnail_markdown(kept) == "no picture: the SM series has no THUMBNAIL instance"
    assert "no picture" in p.thumbnail_check_markdown(kept)


def test_read_region_equals_the_same_pixels_of_the_whole_level(
    pipeline_output: PipelineOutput,
) -> None:
    base = [i for i in p.sm_instances(pipeline_output.sm_files) if i.flavor == "VOLUME"][0]
    whole = total_pixel_matrix(base.path)
    # Across a tile border, to the last column and row.
    x, y = base.tile_width - 37, base.tile_height - 21
    region = p.read_region(base, x, y, 300, 200)
    assert region.shape == (200, 300, 3)
    assert np.abs(region.astype(int) - whole[y : y + 200, x : x + 300].astype(int)).max() <= 2
    corner = p.read_region(base, base.width - 10, base.height - 5, 50, 50)
    assert corner.shape == (5, 10, 3)


def test_drawn_boxes_sit_on_the_generators_cells(
    pipeline_output: PipelineOutput, region: p.RegionPicture
) -> None:
    """Every consensus box drawn, mapped back to the MIRAX canvas, is a nucleated cell the
    generator drew (the bounds shift applied once, the scale right)."""
    truth = pipeline_output.dataset.slides[pipeline_output.slide_id]
    assert isinstance(truth, MiraxGroundTruth)  # a small demo slide, not a banked one
    bx, by = truth.bounds[:2]
    cells = truth.cells
    nucleated = np.flatnonzero(cells.nucleated)
    x, y = region.window[:2]
    assert len(region.boxes) >= 3
    for drawn in region.boxes:
        x1, y1, x2, y2 = drawn.box
        cx = (x1 + x2) / 2 / region.scale + x + bx
        cy = (y1 + y2) / 2 / region.scale + y + by
        half = (x2 - x1) / 2 / region.scale
        distance = np.hypot(cells.cx[nucleated] - cx, cells.cy[nucleated] - cy)
        nearest = nucleated[int(np.argmin(distance))]
        assert distance.min() < 1.5, (drawn, distance.min())
        assert abs(half - cells.r[nearest]) < 1.5


def test_box_interiors_are_darker_than_the_background(
    pipeline_output: PipelineOutput, region: p.RegionPicture
) -> None:
    """On the decoded slide pixels (before drawing): a stained cell inside each box, pale
    smear outside; the same boxes moved by the slide's bounds offset land mostly on smear."""
    light = _luminance(region.slide)
    outside = np.ones(light.shape, dtype=bool)
    for drawn in region.boxes:
        x1, y1, x2, y2 = (round(v) for v in drawn.box)
        outside[max(0, y1) : y2, max(0, x1) : x2] = False
    background = float(np.median(light[outside]))

    def interior(box: tuple[float, ...], dx: float = 0, dy: float = 0) -> float | None:
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        a, b = round(x1 + w / 4 + dx), round(y1 + h / 4 + dy)
        c, d = round(x2 - w / 4 + dx), round(y2 - h / 4 + dy)
        if a < 0 or b < 0 or c > light.shape[1] or d > light.shape[0]:
            return None
        return float(light[b:d, a:c].mean())

    inside = [interior(d.box) for d in region.boxes]
    shown = [v for v in inside if v is not None]
    assert len(shown) >= 3
    assert max(shown) < background - 25, (shown, background)
    truth = pipeline_output.dataset.slides[pipeline_output.slide_id]
    dx, dy = (v * region.scale for v in truth.bounds[:2])
    moved = [v for d in region.boxes if (v := interior(d.box, dx, dy)) is not None]
    if moved:
        assert np.mean(moved) > np.mean(shown) + 25


def test_region_pixels_are_the_slide_at_that_place(
    pipeline_output: PipelineOutput, region: p.RegionPicture
) -> None:
    truth = pipeline_output.dataset.slides[pipeline_output.slide_id]
    assert isinstance(truth, MiraxGroundTruth)
    x, y, w, h = region.window
    bx, by = truth.bounds[:2]
    expected = truth.region(x + bx, y + by, w, h)
    scanned = truth.scanned_mask(x + bx, y + by, w, h)
    expected[~scanned] = 255  # unscanned fields: the converter's white background
    assert correlation(region.slide, expected) > 0.9


def test_boxes_have_their_label_colours_and_rois_are_outlined(region: p.RegionPicture) -> None:
    colours = _display_colours()
    assert region.rois
    for drawn in region.boxes:
        expected = colours[drawn.label]
        assert max(abs(a - b) for a, b in zip(drawn.rgb, expected, strict=True)) <= 2, drawn
        # The colour is on the picture's box edge.
        x1, y1 = round(drawn.box[0]), round(drawn.box[1])
        x2 = round(drawn.box[2])
        if x1 >= 0 and 0 <= y1 < region.image.shape[0] and x2 < region.image.shape[1]:
            edge = region.image[y1, (x1 + x2) // 2].astype(int)
            assert np.abs(edge - np.array(expected)).max() <= 40, (edge, expected)


def test_bar_chart_counts_every_consensus_box_per_label(pipeline_output: PipelineOutput) -> None:
    ann = pipeline_output.dataset.layout.ann_dir(pipeline_output.slide_id)
    counts = p.label_counts(p.read_box_groups(ann / "consensus.dcm"))
    assert {label: n for label, n, _ in counts} == read_back(ann)["consensus"]
    assert [n for _, n, _ in counts] == sorted((n for _, n, _ in counts), reverse=True)
    chart = p.bar_chart(counts)
    assert chart.shape[0] >= 15 * len(counts)
    pictures = p.annotation_pictures(pipeline_output.sm_files, ann)
    (region_image,) = _images(pictures.region)
    ((_, mime, chart_image),) = _images(pictures.chart)
    assert mime == "image/png" and chart_image.size == (chart.shape[1], chart.shape[0])
    # The palette keeps every colour (fewer than 256): the bars are the labels' colours.
    assert np.array_equal(np.asarray(chart_image.convert("RGB")), chart)
    assert max(region_image[2].size) == p.REGION_SIDE
    assert len(pictures.region) + len(pictures.chart) < 120_000
