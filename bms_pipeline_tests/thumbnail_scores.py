"""Scoring the THUMBNAIL similarity rule on data this project did not write: the foreign
MIRAX corpus (../shared/corpus/mirax/) and the generator's variants, each right THUMBNAIL
against wrong ones made from the same instance (see benchmarks/bench_thumbnail.py, which
reports the margins, and bms_pipeline_tests/defs/test_foreign_corpus.py, which asserts them).
"""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate

from bms_pipeline.core.clinical.patients import PatientClinical
from bms_pipeline.core.dicom.convert import ConversionResult, ConversionSettings
from bms_pipeline.core.dicom.idc_conversion import convert_with_idc_metadata
from bms_pipeline.core.dicom.metadata import SlideContext
from bms_pipeline.core.dicom.thumbnail import (
    thumbnail_similarity,
    total_pixel_matrix,
)
from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.core.slide_id import patient_id_of

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus" / "mirax"
SHIFTS = (128, 64, 32, 16)
"""Shifts as fractions of the side (1/N): 8 px to 64 px of a 1024 px THUMBNAIL."""


def corpus_root() -> Path:
    """`../shared/corpus/mirax` beside the repository (the worktree's `../shared`)."""
    for candidate in (CORPUS, Path("/work/shared/corpus/mirax")):
        if (candidate / "manifest.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"{CORPUS}: the foreign MIRAX corpus is not there")


def copy_corpus_slide(slide_id: str, folder: Path, corpus: Path | None = None) -> Path:
    """Copy `<slide_id>.mrxs` and its folder into `folder` (the corpus is never written)."""
    slides = (corpus or corpus_root()) / "slides"
    folder.mkdir(parents=True, exist_ok=True)
    mrxs = folder / f"{slide_id}.mrxs"
    shutil.copyfile(slides / f"{slide_id}.mrxs", mrxs)
    target = folder / slide_id
    shutil.copytree(slides / slide_id, target, dirs_exist_ok=True)
    for path in [target, *target.rglob("*")]:  # the corpus is read-only; copies must not be
        path.chmod(0o755 if path.is_dir() else 0o644)
    return mrxs


def corpus_slide_ids(corpus: Path | None = None) -> list[str]:
    return sorted(json.loads(((corpus or corpus_root()) / "manifest.json").read_text()))


def clinical_row(slide_id: str) -> PatientClinical:
    return PatientClinical(
        patient_id=patient_id_of(slide_id),
        sex="M",
        age="009Y",
        leukemia_type="AML",
        leukemia_subtype="AML",
        ncit_code="C3171",
        ncit_meaning="Acute Myeloid Leukemia",
    )


def convert_mrxs(
    mrxs: Path, out: Path, settings: ConversionSettings | None = None
) -> ConversionResult:
    """The slide converted as `sm_series` converts it (default collection)."""
    from bms_pipeline_tests.conftest import COLLECTION

    slide_id = mrxs.stem
    context = SlideContext(COLLECTION, slide_id, clinical_row(slide_id), openslide_properties(mrxs))
    return convert_with_idc_metadata(mrxs, out / "sm", out / ".staging", context, settings)


def flavor_files(files: Sequence[Path]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.setdefault(str(ds.ImageType[2]), []).append(Path(path))
    return found


def write_like(template: Path, rgb: np.ndarray, dest: Path) -> Path:
    """`template` (a single-image TILED_FULL instance) with its pixels replaced by `rgb`
    (same size), encoded as baseline JPEG in the template's tile grid."""
    ds = pydicom.dcmread(template)
    rows, columns = int(ds.Rows), int(ds.Columns)
    height, width = rgb.shape[:2]
    if (width, height) != (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)):
        raise ValueError(f"{template}: {width}x{height} pixels for another size")
    frames = []
    for y in range(0, height, rows):
        for x in range(0, width, columns):
            tile = np.full((rows, columns, 3), 255, dtype=np.uint8)
            part = rgb[y : y + rows, x : x + columns]
            tile[: part.shape[0], : part.shape[1]] = part
            buffer = io.BytesIO()
            Image.fromarray(tile).save(buffer, format="JPEG", quality=80, subsampling=1)
            frames.append(buffer.getvalue())
    ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def _shifted(rgb: np.ndarray, dx: int, dy: int, background: tuple[int, int, int]) -> np.ndarray:
    moved = np.empty_like(rgb)
    moved[...] = np.asarray(background, dtype=np.uint8)
    height, width = rgb.shape[:2]
    moved[dy:, dx:] = rgb[: height - dy, : width - dx]
    return moved


def _resized(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize(size, Image.Resampling.LANCZOS))


def wrong_thumbnails(
    mrxs: Path, right: np.ndarray, preview: bool = True
) -> Iterator[tuple[str, np.ndarray]]:
    """The wrong pictures of `mrxs` a THUMBNAIL of the size of `right` could hold.
    `preview`: the slide's MIRAX preview covers another area than the bounds (the
    generator's `bounds` preview is the same area, only blurred: not a wrong picture)."""
    height, width = right.shape[:2]
    with openslide.OpenSlide(str(mrxs)) as slide:
        background = tuple(
            bytes.fromhex(slide.properties.get("openslide.background-color", "FFFFFF"))
        )
        associated = {name: slide.associated_images[name] for name in slide.associated_images}
    yield "other_region", np.roll(right, (height // 2, width // 2), axis=(0, 1))
    for n in SHIFTS:
        dx, dy = max(1, math.ceil(width / n)), max(1, math.ceil(height / n))
        yield f"shifted_1/{n}", _shifted(right, dx, dy, background)  # type: ignore[arg-type]
    yield "flipped_h", np.ascontiguousarray(right[:, ::-1])
    yield "flipped_v", np.ascontiguousarray(right[::-1])
    if "macro" in associated:
        yield "macro", _resized(associated["macro"], (width, height))
    if preview and "thumbnail" in associated:
        yield "preview", _resized(associated["thumbnail"], (width, height))


@dataclass
class Scores:
    right: dict[str, float]
    wrong: dict[str, dict[str, float]]

    def lowest_right(self) -> tuple[float, str]:
        slide = min(self.right, key=lambda s: self.right[s])
        return self.right[slide], slide

    def highest_wrong(self, case: str | None = None) -> tuple[float, str]:
        rows = [
            (score, f"{slide} {name}")
            for slide, cases in self.wrong.items()
            for name, score in cases.items()
            if case is None or name == case
        ]
        return max(rows)


def score_series(
    label: str,
    mrxs: Path,
    files: Sequence[Path],
    scratch: Path,
    scores: Scores,
    preview: bool = True,
) -> None:
    """The right score of the series' THUMBNAIL and the scores of every wrong picture."""
    flavors = flavor_files(files)
    thumbnail = flavors["THUMBNAIL"][0]
    others = [f for f in files if f != thumbnail]
    right, _ = thumbnail_similarity(files)
    assert right is not None
    scores.right[label] = right
    picture = total_pixel_matrix(thumbnail)
    for name, wrong in wrong_thumbnails(mrxs, picture, preview):
        fake = write_like(thumbnail, wrong, scratch / label / f"{name.replace('/', '_')}.dcm")
        score, _ = thumbnail_similarity([*others, fake])
        assert score is not None
        scores.wrong.setdefault(label, {})[name] = score


def generator_variants(folder: Path) -> Iterator[tuple[str, Path, ConversionSettings | None]]:
    """The project's own slides (`write_test_slide`): each preview extent, with our
    THUMBNAIL; and the canvas preview through wsidicomizer's stock source (`stock`)."""
    from bms_pipeline_tests.helpers import write_test_slide

    for preview in ("bounds", "canvas", "none"):
        truth = write_test_slide(folder / f"gen-{preview}", preview=preview)
        yield f"generator preview={preview}", truth.mrxs_path, None
    truth = write_test_slide(folder / "gen-stock", preview="canvas")
    yield "stock", truth.mrxs_path, ConversionSettings(fast_composite=False)
