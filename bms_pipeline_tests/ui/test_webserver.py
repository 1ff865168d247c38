"""The Dagster UI, for real: dagster-webserver on loopback, queried over /graphql and rendered
in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.definitions import build_definitions
from bms_pipeline.orchestration.instance import ensure_instance_home
from bms_pipeline.orchestration.operations import plan_slides, register_slides, run_slide

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("ui")
    dataset = write_demo_dataset(root, slides=1, seed=21)
    (slide_id,) = dataset.slides
    home = root / ".dagster"
    ensure_instance_home(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        defs = build_definitions(str(root))
        (plan,) = plan_slides(instance, defs, dataset.layout)
        register_slides(instance, [slide_id])
        assert run_slide(instance, defs, plan).ok
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "BMS_DATA_ROOT": str(root)}
    log = open(root / "webserver.log", "wb")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(REPO / "workspace.yaml"),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the whole tree stops cleanly
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "webserver.log").read_text()[-3000:]) from None
                time.sleep(1)
        yield url, slide_id
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_code_location_loads(webserver: tuple[str, str]) -> None:
    url, _ = webserver
    data = _graphql(
        url,
        """{ workspaceOrError { ... on Workspace { locationEntries {
        name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""",
    )
    (entry,) = data["workspaceOrError"]["locationEntries"]
    assert entry["name"] == "bms_pipeline"
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry


def test_every_asset_and_check_is_present(webserver: tuple[str, str]) -> None:
    url, _ = webserver
    data = _graphql(
        url,
        """{ assetNodes { assetKey { path }
        assetChecksOrError { ... on AssetChecks { checks { name } } } } }""",
    )
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    defs = build_definitions()
    expected_assets = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert set(nodes) == expected_assets
    checks = {c["name"] for n in nodes.values() for c in n["assetChecksOrError"].get("checks", [])}
    expected_checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert checks == expected_checks and checks


def test_slides_partitions_exist_and_the_slide_shows_materialized(
    webserver: tuple[str, str],
) -> None:
    url, slide_id = webserver
    data = _graphql(
        url,
        """query($key: AssetKeyInput!, $p: [String!]) {
        assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys } }
        assetOrError(assetKey: $key) { ... on Asset { assetMaterializations(partitions: $p) { partition } } } }""",
        {"key": {"path": ["sm_series"]}, "p": [slide_id]},
    )
    assert slide_id in data["assetNodeOrError"]["partitionKeys"]
    assert [m["partition"] for m in data["assetOrError"]["assetMaterializations"]] == [slide_id]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_asset_graph_renders_in_headless_chromium(
    webserver: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = webserver
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    common = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1600,1000",
        "--virtual-time-budget=30000",
    ]
    page = f"{url}/locations/bms_pipeline/asset-groups/slides"
    dom = subprocess.run(
        [*common, "--dump-dom", page], capture_output=True, text=True, timeout=180, check=False
    )
    shot = ARTIFACTS / "asset-graph.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", page], capture_output=True, timeout=180, check=False
    )
    for name in ("mrxs_slide", "sm_series", "dicom_validation"):
        assert name in dom.stdout, f"{name} not rendered; stderr: {dom.stderr[-2000:]}"
    assert shot.is_file() and shot.stat().st_size > 10_000


def _markdown_dialog(url: str, label: str, shot: str, tmp_path: Path) -> dict:
    """The images the UI's markdown dialog of metadata entry `label` rendered at `url`."""
    from bms_pipeline_tests.static_page import NODE_MODULES, browser_missing

    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            "node",
            str(Path(__file__).parent / "markdown_metadata.mjs"),
            url,
            label,
            str(ARTIFACTS / shot),
            str(CHROMIUM),
            str(tmp_path / "profile"),
            str(NODE_MODULES),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_the_ui_shows_the_published_thumbnail_and_the_boxes(
    webserver: tuple[str, str], tmp_path: Path
) -> None:
    """Dagster's markdown renderer keeps `data:` images (its sanitizer allows them for `src`):
    the pictures are seen in the UI, not only stored."""
    url, slide_id = webserver
    shown = _markdown_dialog(
        f"{url}/assets/sm_series?partition={slide_id}&view=events",
        "thumbnail",
        "sm-series-thumbnail.png",
        tmp_path / "sm",
    )
    ((image,),) = [shown["images"]]
    assert image["scheme"] == "data:image/jpeg;base64" and image["width"] == 256
    shown = _markdown_dialog(
        f"{url}/assets/ann_series?partition={slide_id}&view=events",
        "boxes_on_the_slide",
        "ann-series-boxes.png",
        tmp_path / "ann",
    )
    ((image,),) = [shown["images"]]
    assert image["width"] == 512 and "box(es)" in shown["text"]
