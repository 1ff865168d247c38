"""Privacy, THUMBNAIL and determinism rules over what real scanners vary: SLIDE_NAME equal to
the slide id, patient-like or empty; a preview over the bounds, the whole canvas or none;
a creation date or none; dates kept or removed.

The expectations come from outside the converter: OpenSlide's own read of the bounds (for
the THUMBNAIL), the MIRAX properties (for the dates), and a second conversion elsewhere."""

from __future__ import annotations

import itertools
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML, CollectionConfig
from bms_pipeline.core.dicom.publication import PublicationRefused
from bms_pipeline.core.dicom.thumbnail import correlation, total_pixel_matrix
from bms_pipeline_tests.conftest import SLIDE_ID, convert_test_slide
from bms_pipeline_tests.helpers import write_test_slide

CREATED = datetime(2021, 11, 5, 14, 3, 27)
NAMES = {"slide id": SLIDE_ID, "patient-like": "KM 2021-0815 MUSTERMANN", "empty": ""}


def _collection(keep_dates: bool) -> CollectionConfig:
    raw = yaml.safe_load(DEFAULT_COLLECTION_YAML)
    raw["deidentification"]["keep_dates"] = keep_dates
    return CollectionConfig.from_dict(raw)


def _flavors(files: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).ImageType[2]): f for f in files}


def _openslide_bounds_thumbnail(mrxs: Path) -> np.ndarray:
    """What OpenSlide shows of the converted region (independent of our THUMBNAIL code)."""
    with openslide.OpenSlide(str(mrxs)) as slide:
        x, y = (
            int(slide.properties["openslide.bounds-x"]),
            int(slide.properties["openslide.bounds-y"]),
        )
        w, h = (
            int(slide.properties["openslide.bounds-width"]),
            int(slide.properties["openslide.bounds-height"]),
        )
        level = slide.level_count - 1
        ds = slide.level_downsamples[level]
        region = slide.read_region((x, y), level, (int(w / ds), int(h / ds)))
        background = slide.properties.get("openslide.background-color", "FFFFFF")
        canvas = Image.new("RGB", region.size, "#" + background)
        canvas.paste(region, mask=region.getchannel("A"))
        return np.asarray(canvas)


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(sorted(NAMES)),
    preview=st.sampled_from(["bounds", "canvas", "none"]),
    dated=st.booleans(),
    keep_dates=st.booleans(),
)
@example(name="slide id", preview="canvas", dated=True, keep_dates=False)
@example(name="patient-like", preview="none", dated=True, keep_dates=True)
@example(name="empty", preview="bounds", dated=False, keep_dates=False)
def test_every_scanner_variant_converts_clean_with_its_own_thumbnail_and_same_bytes(
    tmp_path: Path, name: str, preview: str, dated: bool, keep_dates: bool
) -> None:
    case = tmp_path / f"{name}-{preview}-{dated}-{keep_dates}".replace(" ", "_")
    shutil.rmtree(case, ignore_errors=True)
    truth = write_test_slide(
        case / "raw",
        slide_name=NAMES[name],
        preview=preview,
        creation_datetime=CREATED if dated else None,
    )
    collection = _collection(keep_dates)
    first = convert_test_slide(truth, case / "a", collection=collection)  # passes the gate
    second = convert_test_slide(truth, case / "elsewhere" / "b", collection=collection)

    # Determinism: same names, same bytes, wherever the output lies.
    assert [f.name for f in first.files] == [f.name for f in second.files]
    for a, b in zip(first.files, second.files, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    numbers = sorted(
        int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in first.files
    )
    assert numbers == list(range(1, len(first.files) + 1))

    # A THUMBNAIL whatever the preview, and it is the slide as OpenSlide shows it.
    flavors = _flavors(list(first.files))
    assert "THUMBNAIL" in flavors and "LABEL" not in flavors
    assert (
        correlation(
            total_pixel_matrix(flavors["THUMBNAIL"]), _openslide_bounds_thumbnail(truth.mrxs_path)
        )
        > 0.9
    )

    # Dates: without keep_dates no byte holds the scan date in any form.
    date_forms = [CREATED.strftime("%Y%m%d").encode(), CREATED.strftime("%d/%m/%Y").encode()]
    holding = [f.name for f in first.files if any(d in f.read_bytes() for d in date_forms)]
    if dated and keep_dates:
        assert holding, "kept dates must reach the headers"
    else:
        assert holding == []


def test_a_preview_over_the_whole_canvas_would_have_been_another_picture(tmp_path: Path) -> None:
    """The fault the THUMBNAIL rule fixes, shown with wsidicomizer's own preview copy: on a
    canvas-wide preview it does not match the slide, ours does."""
    from bms_pipeline.core.dicom.convert import ConversionSettings

    truth = write_test_slide(tmp_path / "raw", preview="canvas")  # bounds away from (0, 0)
    reference = _openslide_bounds_thumbnail(truth.mrxs_path)
    ours = convert_test_slide(truth, tmp_path / "ours")
    stock = convert_test_slide(
        truth, tmp_path / "stock", settings=ConversionSettings(fast_composite=False)
    )
    our_thumbnail = total_pixel_matrix(_flavors(list(ours.files))["THUMBNAIL"])
    stock_thumbnail = total_pixel_matrix(_flavors(list(stock.files))["THUMBNAIL"])
    assert correlation(our_thumbnail, reference) > 0.9
    assert correlation(stock_thumbnail, reference) < 0.9


@pytest.mark.parametrize("property_name", ["SLIDE_NAME", "SLIDE_ID"])
def test_an_identifier_reaching_a_header_is_refused_before_publication(
    tmp_path: Path, property_name: str
) -> None:
    leak = "DOE^JANE 1984"
    changes = (
        {"slide_name": leak}
        if property_name == "SLIDE_NAME"
        else {"mirax_slide_id": "ab12cd34-leak"}
    )
    truth = write_test_slide(
        tmp_path / "raw",
        **changes,  # pyright: ignore[reportArgumentType]
        scanner_hardware_id=changes.get("slide_name", "ab12cd34-leak"),
    )
    with pytest.raises(PublicationRefused) as refused:
        convert_test_slide(truth, tmp_path / "out")
    assert any(f"mirax.GENERAL.{property_name}" in str(p) for p in refused.value.problems)
    assert not (tmp_path / "out" / "sm").exists()
    assert (
        list(
            itertools.chain.from_iterable(
                p.iterdir() for p in (tmp_path / "out" / ".staging",) if p.exists()
            )
        )
        == []
    )
