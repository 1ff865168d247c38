"""Issue 25: a DICOMweb server that accepts connections and never answers costs one slide a
bounded time, and every later slide of the process fails fast with the same reason."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bms_pipeline.core.dicomweb.publish import (
    PublishLimits,
    ServerUnreachable,
    forget_unreachable,
    publish_slide,
    slide_instances,
)
from bms_pipeline_tests.pipeline_output import PipelineOutput

LIMITS = PublishLimits(timeout=1.0, attempts=3, backoff=0.2, base_seconds=2.0, probe_seconds=0.5)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A real listening socket that accepts every connection and never answers (the fault
    itself, not a fake of the client)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/dicom-web"
    try:
        yield url
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in accepted:
            conn.close()
        server.close()
        forget_unreachable(url)


def test_a_silent_server_costs_one_slide_a_bounded_time_and_later_slides_fail_fast(
    pipeline_output: PipelineOutput, silent_server: str
) -> None:
    instances = slide_instances(pipeline_output.slide_dir / "sm", pipeline_output.slide_dir / "ann")
    budget = LIMITS.slide_seconds(sum(i.size for i in instances))
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as first:
        publish_slide(instances, silent_server, limits=LIMITS)
    first_seconds = time.monotonic() - started
    # At most the slide's budget plus the one request under way when it ran out.
    assert first_seconds <= budget + LIMITS.timeout + 1.0, first_seconds
    assert "did not answer" in str(first.value) and silent_server in str(first.value)

    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as second:
        publish_slide(instances, silent_server, limits=LIMITS)
    second_seconds = time.monotonic() - started
    assert second_seconds <= LIMITS.probe_seconds + 1.0, second_seconds
    assert "given up earlier" in str(second.value)
    assert str(first.value) in str(second.value)  # the same reason, in full


def test_the_request_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BMS_DICOMWEB_TIMEOUT", "7")
    limits = PublishLimits.from_env()
    assert limits.request_timeout == (7.0, 7.0)
    assert limits.slide_seconds(0) == 21.0
    monkeypatch.setenv("BMS_DICOMWEB_TIMEOUT", "soon")
    with pytest.raises(Exception, match="BMS_DICOMWEB_TIMEOUT"):
        PublishLimits.from_env()
