"""Orthanc's whole-slide-imaging plugin (Debian `orthanc-wsi`) serves our SM series, with its
levels whole or concatenated: its pyramid is ours level for level, its tiles are our frames,
and its viewer page loads."""

from __future__ import annotations

import base64
import io
import urllib.request

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from bms_pipeline.core.dicom.levels import levels_of, volume_levels
from bms_pipeline.core.dicom.thumbnail import total_pixel_matrix
from bms_pipeline.core.dicomweb.config import PASSWORD_ENV, USER_ENV
from bms_pipeline.core.dicomweb.publish import publish_slide, slide_instances
from bms_pipeline_tests.helpers import psnr
from bms_pipeline_tests.orthanc import PASSWORD, USER, OrthancServer
from bms_pipeline_tests.pipeline_output import PipelineOutput


def _get(server: OrthancServer, path: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"{server.url}{path}")
    request.add_header(
        "Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


@pytest.fixture(params=["one instance a level", "concatenated levels"])
def served(request: pytest.FixtureRequest) -> PipelineOutput:
    """The demo as IDC publishes it, and with its levels split into Concatenations."""
    if request.param == "one instance a level":
        return request.getfixturevalue("pipeline_output")
    return request.getfixturevalue("concatenated_pipeline_output")


def test_orthanc_wsi_serves_our_pyramid_and_tiles(
    served: PipelineOutput, empty_orthanc: OrthancServer, monkeypatch
) -> None:
    """Every tile of every level, the concatenated ones included (assembled by the plugin
    from the parts' stated frame positions)."""
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    slide = served.slide_dir
    publish_slide(slide_instances(slide / "sm", slide / "ann"), empty_orthanc.dicomweb_url)
    volumes = volume_levels(levels_of(served.sm_files))
    series_uid = str(dcmread(volumes[0].path, stop_before_pixels=True).SeriesInstanceUID)
    (series,) = [
        h["ID"]
        for h in empty_orthanc.rest("/tools/lookup", "POST", series_uid.encode())  # pyright: ignore[reportGeneralTypeIssues]
        if h["Type"] == "Series"
    ]
    pyramid = empty_orthanc.rest(f"/wsi/pyramids/{series}")
    assert [tuple(s) for s in pyramid["Sizes"]] == [(lv.width, lv.height) for lv in volumes]  # pyright: ignore[reportIndexIssue]
    for index, level in enumerate(volumes):
        ours = total_pixel_matrix(level)
        for ty in range(level.down):
            for tx in range(level.across):
                status, content_type, body = _get(
                    empty_orthanc, f"/wsi/tiles/{series}/{index}/{tx}/{ty}"
                )
                assert status == 200 and content_type.startswith("image/"), (index, tx, ty)
                tile = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
                y0, x0 = ty * level.tile_height, tx * level.tile_width
                expected = ours[y0 : y0 + level.tile_height, x0 : x0 + level.tile_width]
                h, w = expected.shape[:2]
                assert psnr(tile[:h, :w], expected) > 40, (index, tx, ty)
    status, content_type, page = _get(empty_orthanc, f"/wsi/app/viewer.html?series={series}")
    assert status == 200 and "text/html" in content_type and b"<html" in page.lower()
