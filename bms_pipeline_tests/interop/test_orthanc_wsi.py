"""Orthanc's whole-slide-imaging plugin (Debian `orthanc-wsi`) serves our SM series: its pyramid
is ours level for level, its tiles are our frames, and its viewer page loads."""

from __future__ import annotations

import base64
import io
import urllib.request

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.pixels import pixel_array  # pyright: ignore[reportPrivateImportUsage]

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


def test_orthanc_wsi_serves_our_pyramid_and_tiles(
    pipeline_output: PipelineOutput, empty_orthanc: OrthancServer, monkeypatch
) -> None:
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    slide = pipeline_output.slide_dir
    publish_slide(slide_instances(slide / "sm", slide / "ann"), empty_orthanc.dicomweb_url)
    volumes = [
        dcmread(p)
        for p in pipeline_output.sm_files
        if dcmread(p, stop_before_pixels=True).ImageType[2] == "VOLUME"
    ]
    volumes.sort(key=lambda ds: -int(ds.TotalPixelMatrixColumns))
    series_uid = str(volumes[0].SeriesInstanceUID)
    (series,) = [
        h["ID"]
        for h in empty_orthanc.rest("/tools/lookup", "POST", series_uid.encode())  # pyright: ignore[reportGeneralTypeIssues]
        if h["Type"] == "Series"
    ]
    pyramid = empty_orthanc.rest(f"/wsi/pyramids/{series}")
    assert [tuple(s) for s in pyramid["Sizes"]] == [  # pyright: ignore[reportIndexIssue]
        (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)) for ds in volumes
    ]
    for level, ds in enumerate(volumes):
        status, content_type, body = _get(empty_orthanc, f"/wsi/tiles/{series}/{level}/0/0")
        tile = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert status == 200 and content_type.startswith("image/"), (level, content_type)
        ours = pixel_array(ds, index=0)
        assert tile.shape == ours.shape and psnr(tile, ours) > 40, level
    status, content_type, page = _get(empty_orthanc, f"/wsi/app/viewer.html?series={series}")
    assert status == 200 and "text/html" in content_type and b"<html" in page.lower()
