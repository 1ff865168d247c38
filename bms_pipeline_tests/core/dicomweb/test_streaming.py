"""The streamed DICOMweb transfers, apart from a server: the multipart part read in pieces
of any size, the data-set comparison past differing meta groups, the request body."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from bms_pipeline.core.dicomweb.streaming import (
    StowBody,
    _compare_stream,
    _PartReader,
    dataset_start,
)
from bms_pipeline_tests.sparse_dicom import write_sparse_sm


class _Response:
    """What `_PartReader` reads of a requests response: its headers and body pieces."""

    def __init__(self, body: bytes, content_type: str, piece: int) -> None:
        self.headers = {"Content-Type": content_type}
        self._body, self._piece = body, piece

    def iter_content(self, _size: int) -> Iterator[bytes]:
        for start in range(0, len(self._body), self._piece):
            yield self._body[start : start + self._piece]


def _part(payload: bytes, boundary: str = "b0und") -> bytes:
    return (
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )


@pytest.mark.parametrize("piece", [1, 2, 5, 13, 64, 1 << 20])
def test_the_part_is_read_whole_in_pieces_of_any_size(piece: int) -> None:
    # The payload holds a near-delimiter that must not end the part.
    payload = bytes(range(256)) * 20 + b"\r\n--b0un" + bytes(300)
    response = _Response(_part(payload), 'multipart/related; type="x"; boundary="b0und"', piece)
    assert b"".join(_PartReader(response).chunks()) == payload  # pyright: ignore[reportArgumentType]


def test_a_part_without_its_closing_boundary_is_an_error() -> None:
    body = _part(b"abc" * 100)[:-12]
    response = _Response(body, "multipart/related; boundary=b0und", 7)
    with pytest.raises(ValueError, match="closing boundary"):
        b"".join(_PartReader(response).chunks())  # pyright: ignore[reportArgumentType]


def _with_meta(path: Path, meta_extra: bytes) -> bytes:
    """The file with `meta_extra` bytes more in its meta group (as a server's own AE title)."""
    data = path.read_bytes()
    start = dataset_start(data)
    assert start is not None
    group_length = start - 144
    head = data[:140] + (group_length + len(meta_extra)).to_bytes(4, "little")
    return head + data[144:start] + meta_extra + data[start:]


def test_the_server_copy_is_compared_past_its_own_meta_group(tmp_path: Path) -> None:
    sparse = write_sparse_sm(tmp_path / "f.dcm", filler=4096, sparse=False)
    ours = sparse.path.read_bytes()
    start = dataset_start(ours)
    assert start is not None and ours[start : start + 2] == b"\x08\x00"

    def compare(theirs: bytes, piece: int = 100) -> tuple[bool, str]:
        handle = io.BytesIO(ours)
        handle.seek(start)
        pieces = (theirs[i : i + piece] for i in range(0, len(theirs), piece))
        result = _compare_stream(pieces, handle)
        return result.same, result.why

    # A meta element of the server's own (an even-length OB value): the same data set.
    extra = b"\x02\x00\x16\x00AE\x06\x00ORTHNC"
    assert compare(_with_meta(sparse.path, extra)) == (True, "")
    assert compare(ours, piece=1)[0]
    changed = bytearray(ours)
    changed[-20] ^= 0xFF
    same, why = compare(bytes(changed))
    assert not same and f"byte {len(ours) - 20 - start}" in why
    same, why = compare(ours[:-10])
    assert not same and "ours goes on" in why
    assert not compare(ours + b"\0\0")[0]
    assert compare(b"not dicom" * 40) == (False, "the server's copy is not a Part-10 file")


def test_the_request_body_is_the_file_between_its_head_and_tail(tmp_path: Path) -> None:
    sparse = write_sparse_sm(tmp_path / "f.dcm", filler=3 << 20, sparse=False)
    body = StowBody(sparse.path)
    sent = b"".join(body)
    assert len(sent) == len(body)
    assert sent == body.head + sparse.path.read_bytes() + body.tail
    assert b"".join(body) == sent, "a retry sends it whole again"
