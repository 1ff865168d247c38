"""The browser test's web origin: the viewer page and its npm files, and /dicom-web/ passed through
unchanged to Orthanc (which sends no CORS headers and wants its password). A plain reverse proxy,
as a site would put in front of its archive; it serves no DICOM of its own."""

from __future__ import annotations

import base64
import mimetypes
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VIEWER_DIR = Path(__file__).resolve().parent / "viewer"
REQUESTS: list[str] = []  # every path asked for, for a test's diagnostics
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


def _handler(upstream: str, user: str, password: str) -> type[BaseHTTPRequestHandler]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:
            return

        def do_GET(self) -> None:
            REQUESTS.append(self.path)
            if self.path.startswith("/dicom-web/"):
                self._proxy()
            else:
                self._static()

        def _static(self) -> None:
            rel = self.path.split("?", 1)[0].lstrip("/") or "index.html"
            if rel.startswith("npm/"):
                rel = "node_modules/" + rel.removeprefix("npm/")
            elif rel.startswith("static/js/"):
                # The viewer's bundle loads its web worker and codecs from Slim's /static/js/.
                name = rel.removeprefix("static/js/")
                dist = VIEWER_DIR / "node_modules" / "dicom-microscopy-viewer" / "dist"
                rel = str(
                    next(
                        (p for p in (dist / "dynamic-import" / name, dist / name) if p.is_file()),
                        dist / name,
                    ).relative_to(VIEWER_DIR)
                )
            path = (VIEWER_DIR / rel).resolve()
            if VIEWER_DIR not in path.parents or not path.is_file():
                self.send_error(404, f"{rel} not found")
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header(
                "Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _proxy(self) -> None:
            request = urllib.request.Request(f"{upstream}{self.path}")
            for name in ("Accept",):
                if self.headers.get(name):
                    request.add_header(name, self.headers[name])
            request.add_header("Authorization", f"Basic {token}")
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    status, headers, body = response.status, response.headers, response.read()
            except urllib.error.HTTPError as exc:
                status, headers, body = exc.code, exc.headers, exc.read()
            self.send_response(status)
            self.send_header(
                "Content-Type", headers.get("Content-Type", "application/octet-stream")
            )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def viewer_origin(upstream: str, user: str, password: str) -> Iterator[str]:
    """Serve on a free 127.0.0.1 port; yields the origin URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream.rstrip("/"), user, password))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
