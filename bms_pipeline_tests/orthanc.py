"""A real Orthanc (Debian's `orthanc`, `orthanc-dicomweb`, `orthanc-wsi`) for the tests: started on
127.0.0.1 at a free port with a private JSON configuration and its storage in a temporary folder,
and stopped after. Nothing of the machine's own Orthanc service (/etc/orthanc) is used."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ORTHANC = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None
)
PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
WSI_PLUGIN = PLUGINS / "libOrthancWSI.so"
USER, PASSWORD = "bms", "test-password"


def missing_reason() -> str | None:
    """Why the tests cannot start Orthanc here (None when they can); .ci/run installs it."""
    if ORTHANC is None:
        return "Orthanc is not installed (Debian package `orthanc`; .ci/run installs it)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} missing (Debian package `orthanc-dicomweb`)"
    if not WSI_PLUGIN.is_file():
        return f"{WSI_PLUGIN} missing (Debian package `orthanc-wsi`)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    url: str  # http://127.0.0.1:PORT
    folder: Path
    process: subprocess.Popen

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, path: str, method: str = "GET", data: bytes | None = None) -> object:
        """Orthanc's own REST API (as the admin user): counts and resets the tests check."""
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body else None

    def instance_count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])  # pyright: ignore[reportIndexIssue]

    def delete_everything(self) -> None:
        for study in self.rest("/studies"):  # pyright: ignore[reportGeneralTypeIssues]
            self.rest(f"/studies/{study}", method="DELETE")

    @property
    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def orthanc_config(folder: Path, port: int) -> dict:
    """The private configuration: loopback only, basic authentication, the DICOMweb and WSI
    plugins, and `OverwriteInstances` so that a changed instance stored again under the same
    SOP Instance UID replaces the old one (Orthanc's default keeps the first copy)."""
    return {
        "Name": "bms-pipeline-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "TemporaryDirectory": str(folder / "tmp"),
        "StorageCompression": False,
        "HttpPort": port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False,
        "HttpCompressionEnabled": False,
        "OverwriteInstances": True,
        "UnknownSopClassAccepted": True,
        "Plugins": [str(DICOMWEB_PLUGIN), str(WSI_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "Host": f"127.0.0.1:{port}",
            "Ssl": False,
        },
    }


@contextmanager
def running_orthanc(
    folder: Path, port: int | None = None, extra: dict | None = None
) -> Iterator[OrthancServer]:
    """Start Orthanc with its private configuration (updated with `extra`) in `folder`; stop it
    on exit."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    port = port or free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps({**orthanc_config(folder, port), **(extra or {})}, indent=2))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed after the server stops
    process = subprocess.Popen(  # pyright: ignore[reportCallIssue]
        [ORTHANC, str(config)],  # pyright: ignore[reportArgumentType]
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, stopped as a whole
    )
    server = OrthancServer(f"http://127.0.0.1:{port}", folder, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.rest("/system")
                break
            except (OSError, urllib.error.URLError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {server.log[-3000:]}") from None
                time.sleep(0.2)
        yield server
    finally:
        server.stop()
        log.close()
