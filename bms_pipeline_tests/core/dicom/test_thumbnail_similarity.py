"""The THUMBNAIL comparison decodes large baseline-JPEG levels at a reduced DCT scale: it
must see what the full decode through pydicom sees."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage, generate_uid

from bms_pipeline.core.dicom import thumbnail
from bms_pipeline.core.dicom.levels import levels_of

TILE = 512


def _smear_like(width: int, height: int, seed: int) -> np.ndarray:
    """Pale background with darker blobs and fine noise: the texture the check compares
    (blobs drawn at a tenth of the size, then enlarged, to keep the test quick)."""
    rng = np.random.default_rng(seed)
    small_w, small_h = width // 10, height // 10
    yy, xx = np.mgrid[0:small_h, 0:small_w]
    small = np.full((small_h, small_w), 225.0)
    for _ in range(60):
        cx, cy, r = rng.uniform(0, small_w), rng.uniform(0, small_h), rng.uniform(2, 9)
        small -= 90 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    blobs = Image.fromarray(small.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    image = np.asarray(blobs, dtype=np.float64) + rng.normal(0, 6, (height, width))
    grey = np.clip(image, 0, 255).astype(np.uint8)
    return np.stack([grey, (grey * 0.8).astype(np.uint8), grey], axis=-1)


def _write_tiled_jpeg(path: Path, rgb: np.ndarray) -> None:
    """A TILED_FULL multi-frame instance, baseline JPEG in YBR_FULL_422, as wsidicom writes."""
    height, width = rgb.shape[:2]
    frames = []
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = np.full((TILE, TILE, 3), 255, dtype=np.uint8)
            part = rgb[y : y + TILE, x : x + TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            buffer = io.BytesIO()
            Image.fromarray(tile).save(buffer, format="JPEG", quality=90, subsampling=1)
            frames.append(buffer.getvalue())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    ds.Rows = ds.Columns = TILE
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def _full_decode_luminance(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The reference: every frame decoded at full size by pydicom, stored luma, BOX."""
    luma = thumbnail.total_pixel_matrix(path, raw=True)[..., 0]
    image = Image.fromarray(np.ascontiguousarray(luma))
    return np.asarray(image.resize(size, Image.Resampling.BOX), dtype=np.float64)


def test_a_reduced_decode_of_a_large_level_sees_what_the_full_decode_sees(
    tmp_path: Path,
) -> None:
    path = tmp_path / "level.dcm"
    width, height = 8_301, 1_101  # not a multiple of the tile or of any DCT scale
    _write_tiled_jpeg(path, _smear_like(width, height, seed=3))
    level = levels_of([path])[0]
    size = (256, 34)
    plane, reduction = thumbnail._jpeg_luma_plane(level, size)
    assert reduction > 1, "the level is large enough to be decoded at a reduced scale"
    fast = thumbnail._compared_luminance(level, size)
    full = _full_decode_luminance(path, size)
    assert fast.shape == full.shape == (34, 256)
    assert thumbnail._pearson(fast.ravel(), full.ravel()) > 0.998
    assert float(np.abs(fast - full).mean()) < 1.0


def test_a_shifted_picture_still_scores_low_after_the_reduced_decode(tmp_path: Path) -> None:
    picture = _smear_like(8_300, 1_100, seed=3)
    other = _smear_like(8_300, 1_100, seed=4)
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    _write_tiled_jpeg(a, picture)
    _write_tiled_jpeg(b, other)
    (level_a,), (level_b,) = levels_of([a]), levels_of([b])
    assert thumbnail._correlation_of_levels(level_a, level_a) > 0.999
    assert thumbnail._correlation_of_levels(level_a, level_b) < thumbnail.MIN_THUMBNAIL_CORRELATION
