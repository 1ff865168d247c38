"""The foreign MIRAX slides (../shared/corpus/mirax/, written by an independent MIRAX writer)
through one real `bms-pipeline run` over a data root holding all twelve: each converts,
passes the gate and every check, and is published; its level 0 is OpenSlide's read of the
bounds; `sm_series` says which reader served each level and why it fell back; the THUMBNAIL
rule keeps its margins on them. And `conventions: {sm: {thumbnail: false}}` works."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import openslide
import pydicom
import pytest
import yaml
from imagecodecs import jpeg8_decode
from PIL import Image
from pydicom.encaps import generate_frames
from wsidicom.codec import Encoder, JpegSettings

from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML
from bms_pipeline.core.dicom.thumbnail import MIN_THUMBNAIL_CORRELATION
from bms_pipeline.core.mirax.direct import MiraxDirectReader, MiraxDirectUnsupported
from bms_pipeline_tests.cli_runs import Finished, finish, start_run
from bms_pipeline_tests.foreign_corpus import bounds_of, write_foreign_root
from bms_pipeline_tests.helpers import psnr
from bms_pipeline_tests.thumbnail_scores import (
    Scores,
    convert_mrxs,
    corpus_slide_ids,
    generator_variants,
    score_series,
)

SLIDES = corpus_slide_ids()


@dataclass(frozen=True)
class ForeignRun:
    root: Path
    run: Finished
    metadata: dict[str, dict[str, object]]  # sm_series materialization metadata per slide


def _sm_metadata(root: Path) -> dict[str, dict[str, object]]:
    with dg.DagsterInstance.from_config(str(root / ".dagster")) as instance:
        records = instance.fetch_materializations(dg.AssetKey("sm_series"), limit=100).records
        found: dict[str, dict[str, object]] = {}
        for record in records:  # newest first
            mat = record.asset_materialization
            assert mat is not None and mat.partition is not None
            found.setdefault(mat.partition, {k: v.value for k, v in mat.metadata.items()})
    return found


@pytest.fixture(scope="module")
def foreign_run(tmp_path_factory: pytest.TempPathFactory) -> ForeignRun:
    root = tmp_path_factory.mktemp("foreign") / "data"
    write_foreign_root(root)
    run = finish(start_run(root), timeout=1500)
    return ForeignRun(root, run, _sm_metadata(root))


def test_every_foreign_slide_converts_passes_every_check_and_is_published(
    foreign_run: ForeignRun,
) -> None:
    run = foreign_run.run
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(SLIDES)}/{len(SLIDES)} slides ok, collection tables ok" in run.stdout
    checks = re.search(r"(\d+)/(\d+) checks passed", run.stdout)
    assert checks is not None and checks[1] == checks[2], run.stdout
    for slide_id in SLIDES:
        assert re.search(rf"^{slide_id}\s+ok\s", run.stdout, re.M), slide_id
        sm = foreign_run.root / "out" / "dicom" / slide_id / "sm"
        flavors = sorted(
            str(pydicom.dcmread(f, stop_before_pixels=True).ImageType[2]) for f in sm.glob("*.dcm")
        )
        assert flavors.count("THUMBNAIL") == 1, (slide_id, flavors)
        assert (foreign_run.root / "out" / "dicom" / slide_id / "ann").is_dir()
        assert foreign_run.metadata[slide_id]["warnings"] == 0, foreign_run.metadata[slide_id]


def test_sm_series_says_which_reader_served_each_level_and_why_it_fell_back(
    foreign_run: ForeignRun,
) -> None:
    """The metadata agrees with the direct reader's own verdict on the slide and level."""
    fell_back = set()
    for slide_id in SLIDES:
        readers = foreign_run.metadata[slide_id]["readers"]
        assert isinstance(readers, list) and readers, slide_id
        assert readers[0]["level"] == 0
        opened = ""
        try:
            direct = MiraxDirectReader.open(
                foreign_run.root / "raw" / "slides" / f"{slide_id}.mrxs"
            )
        except MiraxDirectUnsupported as exc:
            direct, opened = None, str(exc)
        for level in readers:
            if direct is None:
                assert level["reader"] == "openslide", (slide_id, level)
                reason = str(level["fell_back_because"])
                assert reason.startswith("the direct reader does not open the slide: ")
                assert reason.split(": ")[-1] == opened.split(": ")[-1]
            elif direct.supports_level(int(level["level"])):
                assert level["reader"] == "direct" and level["openslide_reads"] == 0
                assert level["fell_back_because"] is None
            else:
                assert level["reader"] == "openslide" and level["direct_reads"] == 0
                assert level["fell_back_because"] == direct.unsupported_reason(int(level["level"]))
            if level["reader"] != "direct":
                fell_back.add(slide_id)
        if direct is not None:
            direct.close()
    # The corpus has both kinds: BMP24 and a missing OBJECTIVE_MAGNIFICATION go to OpenSlide.
    assert 0 < len(fell_back) < len(SLIDES)


def _openslide_level0(mrxs: Path, width: int, height: int) -> np.ndarray:
    """OpenSlide's read of the bounds over the background colour, `width` x `height`."""
    x, y, _, _ = bounds_of(mrxs)
    with openslide.OpenSlide(str(mrxs)) as slide:
        rgba = slide.read_region((x, y), 0, (width, height))
        background = "#" + slide.properties.get("openslide.background-color", "FFFFFF")
    canvas = Image.new("RGB", rgba.size, background)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return np.asarray(canvas)


@pytest.mark.parametrize("slide_id", SLIDES)
def test_level0_is_openslides_read_of_the_bounds_up_to_the_jpeg_encoding(
    foreign_run: ForeignRun, slide_id: str
) -> None:
    """Frame by frame, the published level 0 decodes to exactly what OpenSlide's read of
    the bounds (over the background) decodes to once encoded at the same JPEG settings; and
    it stays within JPEG's error of the unencoded read."""
    sm = foreign_run.root / "out" / "dicom" / slide_id / "sm"
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in sm.glob("*.dcm")}
    path = max(
        (f for f, ds in headers.items() if ds.ImageType[2] == "VOLUME"),
        key=lambda f: int(headers[f].TotalPixelMatrixColumns),
    )
    ds = pydicom.dcmread(path)
    tile = int(ds.Rows)
    width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    across, down = math.ceil(width / tile), math.ceil(height / tile)
    assert (width, height) == bounds_of(foreign_run.root / "raw" / "slides" / f"{slide_id}.mrxs")[
        2:
    ]
    reference = _openslide_level0(
        foreign_run.root / "raw" / "slides" / f"{slide_id}.mrxs", across * tile, down * tile
    )
    encoder = Encoder.create_for_settings(JpegSettings(quality=80))
    ours = np.zeros_like(reference)
    encoded = np.zeros_like(reference)
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
    for index, frame in enumerate(frames):
        ty, tx = divmod(index, across)
        rows, cols = slice(ty * tile, (ty + 1) * tile), slice(tx * tile, (tx + 1) * tile)
        ours[rows, cols] = jpeg8_decode(frame)
        encoded[rows, cols] = jpeg8_decode(
            encoder.encode(np.ascontiguousarray(reference[rows, cols]))
        )
    ours, encoded, reference = (a[:height, :width] for a in (ours, encoded, reference))
    # Measured: identical (infinite PSNR) on all twelve; a one-pixel shift gives < 35 dB.
    assert psnr(ours, encoded) >= 50, slide_id
    # Measured 36.9-41.2 dB: the JPEG q80 error alone.
    assert psnr(ours, reference) >= 35, slide_id


def test_the_thumbnail_rule_keeps_its_margins_on_foreign_and_generated_slides(
    foreign_run: ForeignRun, tmp_path: Path
) -> None:
    """Every right THUMBNAIL scores above the bound and every wrong picture below it (the
    measured margins are in the README; `bench_thumbnail` prints them)."""
    scores = Scores({}, {})
    for slide_id in SLIDES:
        files = sorted((foreign_run.root / "out" / "dicom" / slide_id / "sm").glob("*.dcm"))
        mrxs = foreign_run.root / "raw" / "slides" / f"{slide_id}.mrxs"
        score_series(slide_id, mrxs, files, tmp_path / "wrong", scores)
    for index, (label, mrxs, settings) in enumerate(generator_variants(tmp_path / "generated")):
        result = convert_mrxs(mrxs, tmp_path / "out" / str(index), settings)
        if label == "stock":
            from bms_pipeline.core.dicom.thumbnail import thumbnail_similarity

            stock, _ = thumbnail_similarity(result.files)
            scores.wrong["stock"] = {"stock_preview_crop": float(stock or 0.0)}
        else:
            score_series(
                label, mrxs, result.files, tmp_path / "wrong", scores, preview="canvas" in label
            )
    lowest, where = scores.lowest_right()
    highest, what = scores.highest_wrong()
    assert lowest > MIN_THUMBNAIL_CORRELATION > highest, (lowest, where, highest, what)
    assert {"other_region", "flipped_h", "flipped_v", "macro", "preview", "stock_preview_crop"} <= {
        name for cases in scores.wrong.values() for name in cases
    }


def test_thumbnail_false_writes_none_and_every_check_passes(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_COLLECTION_YAML)
    raw.setdefault("conventions", {}).setdefault("sm", {})["thumbnail"] = False
    slide_id = "887E5164F6F3985B4F72E518A8150813_1_bm"  # nine levels: the 0.20 of issue 25
    root = tmp_path / "data"
    write_foreign_root(root, [slide_id], collection_yaml=yaml.safe_dump(raw))
    run = finish(start_run(root), timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1/1 slides ok, collection tables ok" in run.stdout, run.stdout
    checks = re.search(r"(\d+)/(\d+) checks passed", run.stdout)
    assert checks is not None and checks[1] == checks[2], run.stdout
    sm = root / "out" / "dicom" / slide_id / "sm"
    flavors = {
        str(pydicom.dcmread(f, stop_before_pixels=True).ImageType[2]) for f in sm.glob("*.dcm")
    }
    assert "THUMBNAIL" not in flavors and "VOLUME" in flavors
    assert _sm_metadata(root)[slide_id]["warnings"] == 0
