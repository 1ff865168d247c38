"""A sparse SM-like DICOM file of any size, for the paths only real-size files reach.

Its header and frames are real JPEG; a filler frame (a hole in the file, no disk) gives it
its size, so a file past 4 GiB costs a few KB of disk. Used by the large-file tests of the
DICOM core and of the DICOMweb publication.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

FILLER = 0xFFFF_FF00  # an item length (32-bit, even) just under 4 GiB
NEEDLE = "MUSTERMANN^ERIKA"


@dataclass(frozen=True)
class SparseSm:
    path: Path
    first: bytes
    """Frame 1's bytes."""
    last: bytes
    """The last frame's bytes (with `NEEDLE` after its EOI)."""
    last_at: int
    """The file offset of the last frame."""
    sop_uid: str
    study_uid: str
    series_uid: str


def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data + b"\0" * (len(data) % 2)


def item(payload: bytes) -> bytes:
    return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(payload)) + payload


def write_sparse_sm(path: Path, filler: int = FILLER, sparse: bool = True) -> SparseSm:
    """Three frames of 16 px, the middle one `filler` bytes (a hole when `sparse`, else
    zeros written), found through the Extended Offset Table."""
    first, last = jpeg(40), jpeg(200) + NEEDLE.encode()  # the needle after the EOI
    offsets = [0, 8 + len(first), 8 + len(first) + 8 + filler]
    lengths = [len(first), filler, len(last)]
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.77.1.6")
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "SM"
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20261207", "021500.123456"
    ds.ContentDate, ds.ContentTime = "20190314", "092653"
    ds.InstanceNumber = "7"
    ds.Rows = ds.Columns = 16
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = 48, 16
    ds.NumberOfFrames = 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 7, 0, 0
    ds.ExtendedOffsetTable = struct.pack("<3Q", *offsets)
    ds.ExtendedOffsetTableLengths = struct.pack("<3Q", *lengths)
    ds.save_as(path, enforce_file_format=True)
    with open(path, "r+b") as handle:
        handle.seek(0, 2)
        handle.write(b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff")  # PixelData, undefined length
        handle.write(item(b""))  # empty Basic Offset Table: the EOT is used
        items_start = handle.tell()
        handle.write(item(first))
        handle.write(b"\xfe\xff\x00\xe0" + struct.pack("<I", filler))
        if sparse:
            handle.seek(filler, 1)  # a hole: no disk
        else:
            zeros = bytes(1 << 20)
            for start in range(0, filler, len(zeros)):
                handle.write(zeros[: min(len(zeros), filler - start)])
        handle.write(item(last))
        handle.write(b"\xfe\xff\xdd\xe0\0\0\0\0")  # sequence delimiter
    return SparseSm(
        path,
        first,
        last,
        items_start + offsets[2] + 8,
        str(uid),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
    )
