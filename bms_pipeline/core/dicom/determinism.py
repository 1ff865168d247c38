"""Byte-identical SM series: the same inputs, code and settings give the same bytes.

wsidicom stamps each instance with the wall clock (InstanceCreationDate/Time) as it writes
its header, and numbers instances in the order its writer threads finish them. Both are
rewritten here, in place and without changing any length, before the series is published:

- InstanceCreationDate/Time become the instance's ContentDate/Time (the scan, or the
  placeholder wsidicom writes when the policy removes dates), so they come from the inputs;
- InstanceNumber follows the level and image type: VOLUME levels from the base down (and
  concatenation parts in order), then THUMBNAIL, OVERVIEW and LABEL.

wsidicomizer's contributing-equipment record carries a wall-clock ContributionDateTime;
`CONTRIBUTING_EQUIPMENT` replaces it with the same record without the (Type 3) time.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import pydicom
from pydicom.tag import Tag
from wsidicom.conceptcode import ContributingEquipmentPurposeCode  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.metadata import ContributingEquipment  # pyright: ignore[reportMissingTypeStubs]

from bms_pipeline.core.dicom.files import read_dataset

_FLAVOR_ORDER = {"VOLUME": 0, "THUMBNAIL": 1, "OVERVIEW": 2, "LABEL": 3}


def contributing_equipment() -> ContributingEquipment:
    """wsidicomizer's own record (`DicomizerSource._contributing_equipment`), without a time."""
    return ContributingEquipment(
        purpose=ContributingEquipmentPurposeCode("Modifying Equipment"),
        manufacturer="wsidicomizer",
        model_name="wsidicomizer",
        software_versions=[version("wsidicomizer")],
        description="Converted to DICOM WSI by wsidicomizer",
        contribution_datetime=None,
    )


class DeterminismError(RuntimeError):
    """A header value that cannot be rewritten in place."""


def _instance_order(ds: pydicom.Dataset) -> tuple[int, int, int, str]:
    flavor = str(ds.ImageType[2]) if len(ds.ImageType) > 2 else ""
    pixels = int(ds.get("TotalPixelMatrixColumns", ds.Columns)) * int(
        ds.get("TotalPixelMatrixRows", ds.Rows)
    )
    part = int(ds.get("ConcatenationFrameOffsetNumber", 0))
    return (_FLAVOR_ORDER.get(flavor, 9), -pixels, part, str(ds.SOPInstanceUID))


def _padded(value: str, length: int, path: Path, keyword: str) -> bytes:
    encoded = value.encode("ascii")
    if len(encoded) > length:
        raise DeterminismError(f"{path}: {keyword} {value!r} does not fit in {length} bytes")
    return encoded + b" " * (length - len(encoded))


def _rewrite(path: Path, updates: dict[str, str]) -> None:
    ds = read_dataset(path, stop_before_pixels=True, defer_size=None)
    patches: list[tuple[int, bytes]] = []
    for keyword, value in updates.items():
        raw = ds.get_item(Tag(keyword))
        # pydicom types get_item as never None, but it is None for an absent tag.
        if raw is None:  # pyright: ignore[reportUnnecessaryComparison]
            continue
        # A RawDataElement (not yet parsed) knows where its value lies and how long it is.
        tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", None)
        if tell is None or length is None:
            raise DeterminismError(f"{path}: cannot locate {keyword} in the file")
        patches.append((int(tell), _padded(value, int(length), path, keyword)))
    with open(path, "r+b") as handle:
        for offset, data in patches:
            handle.seek(offset)
            handle.write(data)


def normalize_series(files: Sequence[Path]) -> None:
    """Make every wall-clock and write-order value of the staged series come from its inputs."""
    headers = {Path(f): read_dataset(f, stop_before_pixels=True) for f in files}
    ordered = sorted(headers, key=lambda p: _instance_order(headers[p]))
    for number, path in enumerate(ordered, 1):
        ds = headers[path]
        content_date = str(ds.get("ContentDate") or "19700101")
        content_time = str(ds.get("ContentTime") or "000000").split(".")[0]
        _rewrite(
            path,
            {
                "InstanceNumber": str(number),
                "InstanceCreationDate": content_date,
                # Whole seconds (HHMMSS) fit any TM wsidicom wrote.
                "InstanceCreationTime": content_time,
            },
        )
