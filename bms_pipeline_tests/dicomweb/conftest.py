"""A real Orthanc with the DICOMweb and WSI plugins for this folder's tests (skipped, with the
reason, where Debian's packages are not installed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bms_pipeline_tests.orthanc import OrthancServer, missing_reason, running_orthanc


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def empty_orthanc(orthanc: OrthancServer) -> OrthancServer:
    """The session's Orthanc with nothing stored, for tests that count instances."""
    orthanc.delete_everything()
    assert orthanc.instance_count() == 0
    return orthanc
