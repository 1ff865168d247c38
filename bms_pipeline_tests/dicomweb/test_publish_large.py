"""A large instance goes to a real Orthanc and back without passing through memory: the
publisher's peak memory stays far below the file's size (issue 29: a full BMDeep slide's
level 0 is one 13.5 GB instance, which read whole would take three times that)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from bms_pipeline.core.dicomweb.config import PASSWORD_ENV, USER_ENV
from bms_pipeline_tests.orthanc import PASSWORD, USER, OrthancServer
from bms_pipeline_tests.sparse_dicom import write_sparse_sm

FILE_MIB = 384

_PUBLISH_TWICE = """
import json, sys
from pathlib import Path
from bms_pipeline.core.dicomweb.publish import publish_slide, slide_instances
slide, url = Path(sys.argv[1]), sys.argv[2]
first = publish_slide(slide_instances(slide / "sm", slide / "ann"), url)
second = publish_slide(slide_instances(slide / "sm", slide / "ann"), url)
print(json.dumps({"stored": first.stored, "frames": first.verified_frames,
                  "unchanged": second.unchanged, "sent_again": second.stored + second.replaced,
                  "peak_kib": int(next(line.split()[1] for line in open("/proc/self/status")
                                       if line.startswith("VmHWM:")))}))
"""


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_a_large_instance_is_stored_compared_and_verified_in_little_memory(
    empty_orthanc: OrthancServer, tmp_path: Path
) -> None:
    slide = tmp_path / "slide"
    (slide / "sm").mkdir(parents=True)
    sparse = write_sparse_sm(slide / "sm" / "level0.dcm", filler=FILE_MIB << 20)
    size = sparse.path.stat().st_size
    before = _sha(sparse.path)
    env = {**os.environ, USER_ENV: USER, PASSWORD_ENV: PASSWORD}
    done = subprocess.run(
        [sys.executable, "-c", _PUBLISH_TWICE, str(slide), empty_orthanc.dicomweb_url],
        capture_output=True,
        env=env,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The publisher's own peak: VmHWM of its memory since exec (getrusage's maxrss would
    # include the forking test process's).
    peak_mib = report.pop("peak_kib") / 1024
    assert report == {
        "stored": [sparse.sop_uid],
        "frames": 1,
        "unchanged": [sparse.sop_uid],
        "sent_again": [],
    }
    assert empty_orthanc.instance_count() == 1
    # Sent, compared with the server's copy and checked frame by frame: never held whole.
    assert peak_mib < FILE_MIB / 2, f"peak {peak_mib:.0f} MiB for a {size >> 20} MiB file"
    assert _sha(sparse.path) == before, "the file is left as it was"


def test_a_refused_large_instance_says_how_to_split_the_levels(
    pipeline_output, monkeypatch
) -> None:
    """A reverse proxy's 413 for a large body (nginx's client_max_body_size): the error names
    the instance and its size, and points to `concatenate_frames`. The proxy is a small
    local HTTP server that answers QIDO-RS with nothing and STOW-RS with 413: the refusal is
    the fault injected; no Orthanc can be made to refuse a body by its size."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest

    from bms_pipeline.core.dicomweb.publish import (
        DicomwebError,
        PublishLimits,
        forget_unreachable,
        publish_slide,
        slide_instances,
    )

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(413, "Request Entity Too Large")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    instances = slide_instances(pipeline_output.slide_dir / "sm", pipeline_output.slide_dir / "ann")
    largest = max(i.size for i in instances)
    try:
        for threshold, hinted in ((1, True), (largest + 1, False)):
            limits = PublishLimits(attempts=1, large_instance_bytes=threshold)
            with pytest.raises(DicomwebError) as raised:
                publish_slide(instances, url, limits=limits)
            message = str(raised.value)
            assert "413" in message
            assert ("concatenate_frames" in message) == hinted, message
            assert (" GB, more than some servers" in message) == hinted, message
    finally:
        server.shutdown()
        forget_unreachable(url)
