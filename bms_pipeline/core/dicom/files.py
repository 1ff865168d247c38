"""Reading and writing DICOM files through pydicom, typed for the strict core.

pydicom annotates its path parameters as a bare `os.PathLike`, which pyright's strict mode
reports as partially unknown at every call; the two functions below are the one place that
meets that gap, with the arguments this package uses.
"""

from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread, dcmwrite  # pyright: ignore[reportUnknownVariableType]
from pydicom.dataset import Dataset, FileDataset


def read_dataset(
    path: Path | str | BinaryIO,
    *,
    stop_before_pixels: bool = False,
    defer_size: int | None = None,
    specific_tags: list[str] | None = None,
) -> FileDataset:
    """`pydicom.dcmread` of a file path (or an open file, left where pydicom stopped: at the
    PixelData element with `stop_before_pixels`), with the options the package uses."""
    return dcmread(
        path,
        defer_size=defer_size,
        stop_before_pixels=stop_before_pixels,
        specific_tags=specific_tags,
    )


def write_dataset(path: Path | str, dataset: Dataset, *, enforce_file_format: bool) -> None:
    """`pydicom.dcmwrite` of a dataset to a file path."""
    dcmwrite(path, dataset, enforce_file_format=enforce_file_format)
