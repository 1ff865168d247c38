"""The slide and its boxes in dicom-microscopy-viewer (npm), on Orthanc's DICOMweb, in headless
Debian Chromium: tiles drawn, OpenSlide's orientation, the boxes over their cells."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from bms_pipeline.core.dicomweb.publish import publish_slide, slide_instances
from bms_pipeline_tests.dicomweb.viewer_server import VIEWER_DIR, viewer_origin
from bms_pipeline_tests.orthanc import PASSWORD, USER, OrthancServer
from bms_pipeline_tests.pipeline_output import PipelineOutput

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "viewer"
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _skip_reason() -> str | None:
    if NODE is None:
        return "node is not installed"
    if CHROMIUM is None:
        return "Debian's chromium is not installed (.ci/run installs it)"
    if not (VIEWER_DIR / "node_modules" / "dicom-microscopy-viewer").is_dir():
        return f"npm packages missing: run `npm ci` in {VIEWER_DIR} (.ci/run does)"
    return None


@pytest.fixture(scope="module", params=["one instance a level", "concatenated levels"])
def viewed(request: pytest.FixtureRequest) -> PipelineOutput:
    """The demo as IDC publishes it, and with its levels split into Concatenations (what a
    server that cannot hold a 13 GB instance is given)."""
    if request.param == "one instance a level":
        return request.getfixturevalue("pipeline_output")
    return request.getfixturevalue("concatenated_pipeline_output")


@dataclass(frozen=True)
class Shot:
    """What the viewer drew of one output: fitted to the window, then zoomed in to the base
    level with the mouse wheel, and its state (tiles loaded, errors) after each."""

    path: Path
    state: dict
    zoomed: Path
    zoomed_state: dict


_SHOTS: dict[Path, Shot] = {}


def _shoot(output: PipelineOutput, orthanc: OrthancServer, profile: Path) -> Shot:
    """Publish the output's slide alone to Orthanc and let the viewer draw it (once per
    output: both parametrizations and the comparison reuse it)."""
    if output.root in _SHOTS:
        return _SHOTS[output.root]
    import os

    os.environ.setdefault("BMS_DICOMWEB_USER", USER)
    os.environ.setdefault("BMS_DICOMWEB_PASSWORD", PASSWORD)
    orthanc.delete_everything()
    slide = output.slide_dir
    publish_slide(slide_instances(slide / "sm", slide / "ann"), orthanc.dicomweb_url)
    study = str(dcmread(output.sm_files[0], stop_before_pixels=True).StudyInstanceUID)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    concatenated = any(
        "ConcatenationUID" in dcmread(f, stop_before_pixels=True) for f in output.sm_files
    )
    out = ARTIFACTS / (
        "dicom-microscopy-viewer" + ("-concatenated" if concatenated else "") + ".png"
    )
    zoomed = out.with_name(out.stem + "-zoomed.png")
    with viewer_origin(orthanc.url, USER, PASSWORD) as origin:
        done = subprocess.run(  # pyright: ignore[reportCallIssue]
            [  # pyright: ignore[reportArgumentType]
                NODE,
                str(VIEWER_DIR / "screenshot.mjs"),
                f"{origin}/index.html?study={study}",
                str(out),
                CHROMIUM,
                str(profile),
                str(zoomed),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=VIEWER_DIR,
        )
    out.with_suffix(".log.txt").write_text(done.stdout + done.stderr)
    results = {
        key: json.loads(line.removeprefix(f"{key} "))
        for line in done.stdout.splitlines()
        for key in ("RESULT", "RESULT_ZOOMED")
        if line.startswith(f"{key} ")
    }
    assert done.returncode == 0 and len(results) == 2, (
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    _SHOTS[output.root] = Shot(out, results["RESULT"], zoomed, results["RESULT_ZOOMED"])
    return _SHOTS[output.root]


@pytest.fixture(scope="module")
def shot(viewed: PipelineOutput, orthanc: OrthancServer, tmp_path_factory) -> Shot:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    return _shoot(viewed, orthanc, tmp_path_factory.mktemp("chromium-profile"))


@pytest.fixture(scope="module")
def screenshot(shot: Shot) -> tuple[Path, dict]:
    return shot.path, shot.state


def test_zoomed_in_the_base_level_tiles_are_drawn_without_errors(shot: Shot) -> None:
    """A concatenated level's frames are asked of the part that holds them."""
    state = shot.zoomed_state
    assert not state["errors"] and state["frameErrors"] == 0, state["errors"]
    assert state["frames"] > shot.state["frames"], "zooming in loaded no finer tiles"
    rgb = np.asarray(Image.open(shot.zoomed).convert("RGB"))
    assert rgb.astype(float).std() > 10, "the zoomed view is blank"


def test_a_concatenated_slide_is_drawn_as_the_single_instance_one(
    pipeline_output: PipelineOutput,
    concatenated_pipeline_output: PipelineOutput,
    orthanc: OrthancServer,
    tmp_path_factory,
) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    one = _shoot(pipeline_output, orthanc, tmp_path_factory.mktemp("chromium-profile"))
    parts = _shoot(
        concatenated_pipeline_output, orthanc, tmp_path_factory.mktemp("chromium-profile")
    )
    for a, b in ((one.path, parts.path), (one.zoomed, parts.zoomed)):
        pa, pb = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (a, b))
        assert pa.shape == pb.shape
        assert np.abs(pa - pb).max() <= 2, (a, b)


MAGENTA = np.array([255, 0, 255])


def _magenta(rgb: np.ndarray) -> np.ndarray:
    return np.abs(rgb.astype(int) - MAGENTA).sum(axis=2) < 90


def _slide_region(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the drawn slide: what is not the black background (the
    page hides the viewer's overview map and scale bar)."""
    mask = rgb.astype(int).sum(axis=2) > 60
    rows = np.nonzero(mask.mean(axis=1) > 0.5)[0]  # small controls never fill half a line
    cols = np.nonzero(mask.mean(axis=0) > 0.5)[0]
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def _boxes(ann_files: list[Path]) -> dict[str, list[np.ndarray]]:
    """Each ANN object's boxes ((4, 2) column/row corners of the base level), by file stem."""
    import highdicom as hd

    boxes = {}
    for path in ann_files:
        ann = hd.ann.annread(path)
        boxes[path.stem] = [
            np.asarray(box)
            for group in ann.get_annotation_groups()
            for box in group.get_graphic_data(coordinate_type="2D")
        ]
    return boxes


def _openslide_image(pipeline_output: PipelineOutput) -> np.ndarray:
    import openslide

    with openslide.OpenSlide(
        str(pipeline_output.dataset.layout.mrxs(pipeline_output.slide_id))
    ) as slide:
        x, y = (int(slide.properties[f"openslide.bounds-{k}"]) for k in ("x", "y"))
        w, h = (int(slide.properties[f"openslide.bounds-{k}"]) for k in ("width", "height"))
        level = slide.get_best_level_for_downsample(8)
        d = slide.level_downsamples[level]
        rgba = slide.read_region((x, y), level, (int(w / d), int(h / d)))
    region = Image.new("RGB", rgba.size, (255, 255, 255))  # unscanned areas white, as converted
    region.paste(rgba, mask=rgba.getchannel("A"))
    return np.asarray(region), (w, h)  # pyright: ignore[reportReturnType]


def test_viewer_draws_without_errors(screenshot: tuple[Path, dict]) -> None:
    _, state = screenshot
    assert not state["errors"], state["errors"]
    assert state["replacedFloatElements"] > 0  # Orthanc 1.10's truncated OF values were met
    assert state["rotationDegrees"] % 360 == 0  # the orientation the viewer computed


def test_tiles_are_drawn(screenshot: tuple[Path, dict]) -> None:
    path, _ = screenshot
    rgb = np.asarray(Image.open(path).convert("RGB"))
    x0, y0, x1, y1 = _slide_region(rgb)
    drawn = rgb[y0:y1, x0:x1].astype(float)
    assert (x1 - x0) * (y1 - y0) > 0.2 * rgb.shape[0] * rgb.shape[1]
    cells = (drawn.mean(axis=2) < 150) & ~_magenta(rgb[y0:y1, x0:x1])  # dark stained cells
    assert drawn.std() > 10 and cells.mean() > 0.001, "the slide area is blank"


def test_slide_is_shown_as_openslide_shows_it(
    screenshot: tuple[Path, dict], viewed: PipelineOutput
) -> None:
    """The drawn slide matches OpenSlide's image better unturned than turned or mirrored."""
    path, _ = screenshot
    rgb = np.asarray(Image.open(path).convert("RGB"))
    x0, y0, x1, y1 = _slide_region(rgb)
    reference, (width, height) = _openslide_image(viewed)
    assert ((x1 - x0) > (y1 - y0)) == (width > height), ((x0, y0, x1, y1), (width, height))
    shown = rgb[y0:y1, x0:x1].mean(axis=2)
    keep = ~_magenta(rgb[y0:y1, x0:x1])

    def score(candidate: np.ndarray) -> float:
        resized = (
            np.asarray(Image.fromarray(candidate).resize((x1 - x0, y1 - y0)))
            .astype(float)
            .mean(axis=2)
        )
        return float(np.corrcoef(resized[keep], shown[keep])[0, 1])

    scores = {
        name: score(np.ascontiguousarray(image))
        for name, image in {
            "as OpenSlide": reference,
            "turned 90": np.rot90(reference),
            "turned 180": np.rot90(reference, 2),
            "turned 270": np.rot90(reference, 3),
            "mirrored": reference[:, ::-1],
            "flipped": reference[::-1],
        }.items()
    }
    assert max(scores, key=scores.get) == "as OpenSlide" and scores["as OpenSlide"] > 0.5, scores  # pyright: ignore[reportArgumentType, reportCallIssue]


def test_annotation_boxes_are_drawn_over_their_cells(
    screenshot: tuple[Path, dict], viewed: PipelineOutput
) -> None:
    pipeline_output = viewed
    path, state = screenshot
    rgb = np.asarray(Image.open(path).convert("RGB"))
    x0, y0, x1, y1 = _slide_region(rgb)
    _, (width, height) = _openslide_image(pipeline_output)
    sx, sy = (x1 - x0) / width, (y1 - y0) / height
    magenta = _magenta(rgb)
    boxes = _boxes(pipeline_output.ann_files)
    assert state["annotations"] == sum(map(len, boxes.values())) > 0
    background = np.median(rgb[y0:y1, x0:x1].mean(axis=2))
    outlined, over_cells, cell_boxes = 0, 0, 0
    total = 0
    for stem, corners in boxes.items():
        for box in corners:
            total += 1
            cols, rows = box[:, 0] * sx + x0, box[:, 1] * sy + y0
            left, right, top, bottom = cols.min(), cols.max(), rows.min(), rows.max()
            edge = magenta[
                max(int(top) - 2, 0) : int(bottom) + 3, max(int(left) - 2, 0) : int(right) + 3
            ]
            outlined += edge.any()
            if stem != "rois":
                cell_boxes += 1
                cx, cy = int((left + right) / 2), int((top + bottom) / 2)
                inner = rgb[cy - 1 : cy + 2, cx - 1 : cx + 2].mean(axis=2)
                over_cells += inner.mean() < background - 25  # a stained cell, darker than glass
    assert outlined >= 0.95 * total, (outlined, total)
    assert over_cells >= 0.9 * cell_boxes, (over_cells, cell_boxes)
