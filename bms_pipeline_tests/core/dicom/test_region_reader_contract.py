"""The converter's `RegionReader` contract, held against OpenSlide on every foreign slide.

`core.dicom.region_reader`: the reader the converter opens (`open_mirax_reader`) returns
exactly OpenSlide's buffer or refuses (`ReadRefused`), and a level it says it supports is
never refused for a conversion's reads. test_mirax_direct.py checks the direct reader's
cases on slides the project writes; this holds it to the contract on slides it did not
write (../shared/corpus/mirax/), with OpenSlide behind the same interface as the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from bms_pipeline.core.dicom.region_reader import (
    OpenSlideRegionReader,
    ReadRefused,
    RegionReader,
    open_mirax_reader,
)
from bms_pipeline_tests.thumbnail_scores import copy_corpus_slide, corpus_slide_ids

TILE = 512
CACHE_BYTES = 32 << 20  # small: evictions happen within a slide


@pytest.fixture(scope="module")
def corpus_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def _bounds(slide: openslide.OpenSlide) -> tuple[int, int, int, int]:
    props = slide.properties
    if "openslide.bounds-x" in props:
        return tuple(int(props[f"openslide.bounds-{k}"]) for k in ("x", "y", "width", "height"))  # type: ignore[return-value]
    return (0, 0, *slide.dimensions)


def _same(
    reader: RegionReader,
    reference: RegionReader,
    level: int,
    region: tuple[int, int, int, int],
    slide_id: str,
) -> bool:
    """True when the reader equals OpenSlide on `region`, False when it refused; fails the
    test on other pixels."""
    try:
        got = reader.read_bgra(level, *region)
    except ReadRefused:
        return False
    expected = reference.read_bgra(level, *region)
    assert got.shape == expected.shape and got.dtype == np.uint8
    if not np.array_equal(got, expected):
        bad = np.argwhere((got != expected).any(axis=-1))
        pytest.fail(
            f"{slide_id} level {level} region {region}: {len(bad)} pixels differ from "
            f"OpenSlide's, first at {bad[0].tolist()}"
        )
    return True


@pytest.mark.parametrize("slide_id", corpus_slide_ids())
def test_reader_equals_openslide_or_refuses(slide_id: str, corpus_copy: Path) -> None:
    mrxs = copy_corpus_slide(slide_id, corpus_copy / slide_id)
    reference = OpenSlideRegionReader(mrxs)
    try:
        reader = open_mirax_reader(mrxs, CACHE_BYTES)
    except ReadRefused as exc:
        # Refusing a whole slide is within the contract; the reason names the slide's file.
        assert slide_id in str(exc), f"the refusal names no file: {exc}"
        reference.close()
        return
    slide = openslide.OpenSlide(str(mrxs))
    bx, by, bw, bh = _bounds(slide)
    rng = np.random.default_rng(sum(map(ord, slide_id)))
    try:
        for level, (width, height) in enumerate(slide.level_dimensions):
            ds = int(round(slide.level_downsamples[level]))
            supported = reader.supports_level(level)
            assert supported == (reader.unsupported_reason(level) is None), level
            # A conversion's reads: tiles of the bounds at this level, from its origin.
            tiles = [
                (bx + tx * ds, by + ty * ds, TILE, TILE)
                for ty in range(0, max(bh // ds, 1), TILE)
                for tx in range(0, max(bw // ds, 1), TILE)
            ]
            served = [_same(reader, reference, level, t, slide_id) for t in tiles]
            if supported:
                assert all(served), f"{slide_id}: level {level} is supported, a tile was refused"
            # Any other read: equal or refused, and level 0 never refused.
            for _ in range(8):
                region = (
                    int(rng.integers(-300, width * ds)),
                    int(rng.integers(-300, height * ds)),
                    int(rng.integers(1, 400)),
                    int(rng.integers(1, 400)),
                )
                if not _same(reader, reference, level, region, slide_id):
                    assert level > 0, f"{slide_id}: a level-0 read {region} was refused"
        assert reader.supports_level(0), f"{slide_id}: opened, yet level 0 is not supported"
    finally:
        reader.close()
        reference.close()
        slide.close()


def test_the_reader_serves_most_of_the_corpus(corpus_copy: Path) -> None:
    """Not a vacuous contract: most foreign slides open and are served at level 0."""
    opened = 0
    ids = corpus_slide_ids()
    for slide_id in ids:
        mrxs = copy_corpus_slide(slide_id, corpus_copy / "count" / slide_id)
        try:
            reader = open_mirax_reader(mrxs, CACHE_BYTES)
        except ReadRefused:
            continue
        opened += reader.supports_level(0)
        reader.close()
    assert opened >= len(ids) * 2 // 3, f"the direct reader serves {opened} of {len(ids)}"


def test_the_package_reaches_the_direct_reader_only_through_the_interface() -> None:
    """Outside core/mirax/direct/ itself, only core/dicom/region_reader.py imports it."""
    import ast

    import bms_pipeline

    package = Path(bms_pipeline.__file__).parent
    allowed = {package / "core" / "dicom" / "region_reader.py"}
    direct = package / "core" / "mirax" / "direct"
    found = []
    for path in sorted(package.rglob("*.py")):
        if path in allowed or direct in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(m.startswith("bms_pipeline.core.mirax.direct") for m in modules):
                found.append(f"{path.relative_to(package)}:{getattr(node, 'lineno', 0)}")
    assert not found, "the direct MIRAX reader imported outside its interface: " + ", ".join(found)
