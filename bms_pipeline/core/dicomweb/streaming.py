"""STOW-RS and WADO-RS of whole Part-10 files without holding them in memory.

A full-height BMDeep slide's level 0 is one 13.5 GB instance. dicomweb-client stores a
`pydicom.Dataset`, so the file would be read whole, encoded again into memory and copied
into a multipart body: three copies of 13.5 GB on a 24 GB machine. Here the file on disk
is the request body (its bytes between a multipart head and tail, read as they are sent,
with a Content-Length), the server's copy is compared with ours as it arrives, and frame 1
is read from the file alone. Memory stays at a few MiB whatever the instance's size.

`server_copy_matches` compares the data set bytes after the file meta group (a server
writes its own meta group, e.g. its AE title): the same bytes prove the same content; a
server that encodes the same content differently is sent the file again (safe, and said in
the log), which for small objects `publish` avoids by comparing data sets instead.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import requests
from pydicom import Dataset
from pydicom.encaps import get_frame

from bms_pipeline.core.dicom.files import read_dataset

CHUNK = 1 << 20
BOUNDARY = "bms-pipeline-part-5f0c2a9e"
_PREAMBLE = 128


class StowBody:
    """The multipart/related body of one Part-10 file, read from disk as it is sent.

    requests sends an iterable with a length with that Content-Length (no chunked encoding,
    which not every server reads); each iteration opens the file again, so a retried
    request sends it whole again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.head = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.size = path.stat().st_size

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        sent = 0
        with open(self.path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                sent += len(chunk)
                yield chunk
        if sent != self.size:
            raise OSError(
                f"{self.path}: {sent} bytes read, {self.size} expected (changed while sent)"
            )
        yield self.tail


def stow_file(
    session: requests.Session,
    url: str,
    study_uid: str,
    path: Path,
    timeout: float | tuple[float, float],
) -> Dataset:
    """STOW-RS the Part-10 file at `path` into `study_uid`; the server's answer (a data set,
    empty if it sent none). HTTP errors raise `requests.HTTPError`."""
    body = StowBody(path)
    response = session.post(
        f"{url.rstrip('/')}/studies/{study_uid}",
        data=body,
        headers={"Content-Type": body.content_type, "Accept": "application/dicom+json"},
        timeout=timeout,
    )
    response.raise_for_status()
    if not response.content:
        return Dataset()
    kind = response.headers.get("Content-Type", "").split(";")[0].strip()
    if kind in ("application/dicom+json", "application/json"):
        answer: Any = json.loads(response.content)
        if isinstance(answer, list):
            answer = cast("list[Any]", answer)[0] if answer else {}
        return Dataset.from_json(cast("dict[str, Any]", answer))
    return Dataset()  # an XML answer: success by its status; QIDO-RS checks afterwards


def instance_url(url: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{url.rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def dataset_start(head: bytes) -> int | None:
    """Where the data set begins in a Part-10 file starting with `head` (at least 144
    bytes): after the preamble, "DICM" and the meta group whose length (0002,0000) gives.
    None if `head` is not laid out so."""
    if len(head) < _PREAMBLE + 16 or head[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return None
    tag, vr, length = struct.unpack_from("<I2sH", head, _PREAMBLE + 4)
    if tag != 0x00000002 or vr != b"UL" or length != 4:
        return None
    (group_length,) = struct.unpack_from("<I", head, _PREAMBLE + 12)
    return _PREAMBLE + 16 + group_length


class _PartReader:
    """The content of the first part of a multipart/related response, streamed."""

    def __init__(self, response: requests.Response) -> None:
        self._chunks = response.iter_content(CHUNK)
        kind = response.headers.get("Content-Type", "")
        boundary = _boundary(kind)
        self._delimiter = f"\r\n--{boundary}".encode() if boundary else None
        self._buffer = b""
        if boundary is not None:
            opening = f"--{boundary}".encode()
            while b"\r\n\r\n" not in self._buffer:
                chunk = next(self._chunks, b"")
                if not chunk:
                    raise ValueError("the response ended inside its first part's headers")
                self._buffer += chunk
            start = self._buffer.find(opening)
            if start < 0:
                raise ValueError("the response does not begin with its boundary")
            self._buffer = self._buffer[self._buffer.index(b"\r\n\r\n", start) + 4 :]

    def chunks(self) -> Iterator[bytes]:
        """The part's bytes, in pieces as they arrive."""
        delimiter = self._delimiter
        buffer, self._buffer = self._buffer, b""
        while True:
            if delimiter is not None:
                end = buffer.find(delimiter)
                if end >= 0:
                    if end:
                        yield buffer[:end]
                    return
                # Keep what could be the start of the delimiter for the next piece.
                keep = len(delimiter) - 1
                if len(buffer) > keep:
                    yield buffer[: len(buffer) - keep]
                    buffer = buffer[len(buffer) - keep :]
            elif buffer:
                yield buffer
                buffer = b""
            chunk = next(self._chunks, b"")
            if not chunk:
                if delimiter is not None:
                    raise ValueError("the response ended before its closing boundary")
                return
            buffer += chunk


def _boundary(content_type: str) -> str | None:
    if not content_type.lower().startswith("multipart/"):
        return None
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip().strip('"')
    return None


@dataclass(frozen=True)
class Comparison:
    same: bool
    why: str
    """What differed first (empty when the same)."""


def server_copy_matches(
    session: requests.Session,
    url: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    path: Path,
    timeout: float | tuple[float, float],
) -> Comparison:
    """Whether the server's copy of an instance (WADO-RS, as stored) holds our file's data
    set byte for byte (the meta groups may differ), compared as it arrives."""
    response = session.get(
        instance_url(url, study_uid, series_uid, sop_uid),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=timeout,
        stream=True,
    )
    with response:
        response.raise_for_status()
        with open(path, "rb") as ours:
            local_start = dataset_start(ours.read(_PREAMBLE + 16))
            if local_start is None:
                raise ValueError(f"{path}: not a Part-10 file with a meta group length")
            ours.seek(local_start)
            return _compare_stream(_PartReader(response).chunks(), ours)


def _compare_stream(theirs: Iterator[bytes], ours: BinaryIO) -> Comparison:
    """Compare the server's Part-10 bytes, past its meta group, with `ours` (positioned at
    our data set)."""
    head = b""
    in_data_set = False
    offset = 0
    for piece in theirs:
        chunk = piece
        if not in_data_set:
            head += piece
            if len(head) < _PREAMBLE + 16:
                continue
            start = dataset_start(head)
            if start is None:
                return Comparison(False, "the server's copy is not a Part-10 file")
            if len(head) < start:
                continue
            chunk, in_data_set = head[start:], True
        mine = ours.read(len(chunk))
        if mine != chunk:
            at = offset + _first_difference(mine, chunk)
            return Comparison(False, f"the data sets differ from byte {at} on")
        offset += len(chunk)
    if not in_data_set:
        return Comparison(False, "the server's copy ends inside its meta group")
    if ours.read(1):
        return Comparison(False, f"the server's copy ends at data set byte {offset}, ours goes on")
    return Comparison(True, "")


def _first_difference(a: bytes, b: bytes) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def first_frame_of_file(path: Path) -> bytes:
    """Frame 1 of an image as the file stores it (an encapsulated frame, or native bytes),
    read from the header and the frame alone: the pixel data is never read whole."""
    with open(path, "rb") as handle:
        ds = read_dataset(handle, stop_before_pixels=True)
        at = handle.tell()  # pydicom stops at the PixelData element's tag
        tag, vr, _reserved, length = struct.unpack("<I2sHI", handle.read(12))
        if tag != 0x00107FE0 or vr not in (b"OB", b"OW"):
            raise ValueError(f"{path}: no explicit-VR PixelData at byte {at}")
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            extended = None
            if "ExtendedOffsetTable" in ds:
                extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
            frames = int(ds.get("NumberOfFrames", 1))
            return get_frame(handle, 0, extended_offsets=extended, number_of_frames=frames)
        frame_bytes = (
            int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * (int(ds.BitsAllocated) // 8)
        )
        return handle.read(min(frame_bytes, length))
