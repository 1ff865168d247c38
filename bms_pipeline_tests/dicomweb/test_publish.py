"""Publishing to a real Orthanc (DICOMweb plugin): round trip, idempotence, replacement of a
changed instance, and servers that refuse (wrong password, an instance filtered out, down)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import dagster as dg
import pytest
from pydicom import dcmread

from bms_pipeline.core.dicomweb.config import PASSWORD_ENV, URL_ENV, USER_ENV
from bms_pipeline.core.dicomweb.publish import DicomwebError, publish_slide, slide_instances
from bms_pipeline.definitions import build_definitions
from bms_pipeline_tests.orthanc import PASSWORD, USER, OrthancServer, free_port, running_orthanc
from bms_pipeline_tests.pipeline_output import PipelineOutput

DICOMWEB_KEY = dg.AssetKey("dicomweb_series")


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stored_file(server: OrthancServer, sop_uid: str) -> bytes | None:
    """The file Orthanc holds for a SOP Instance UID, through its own REST API (not DICOMweb)."""
    import urllib.request

    hits = [
        h
        for h in server.rest("/tools/lookup", "POST", sop_uid.encode())  # pyright: ignore[reportGeneralTypeIssues]
        if h["Type"] == "Instance"
    ]
    if not hits:
        return None
    (hit,) = hits  # one instance per UID: no duplicates
    request = urllib.request.Request(f"{server.url}/instances/{hit['ID']}/file")
    import base64

    request.add_header(
        "Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def _run_asset(output: PipelineOutput) -> tuple[bool, dict, str]:
    """Materialize dicomweb_series for the slide through Dagster, as `run` does."""
    defs = build_definitions(str(output.root))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("slides", [output.slide_id])
        result = defs.resolve_job_def("slides_job").execute_in_process(
            partition_key=output.slide_id,
            instance=instance,
            asset_selection=[DICOMWEB_KEY],
            raise_on_error=False,
        )
        metadata = {
            k: v.value
            for m in result.asset_materializations_for_node("dicomweb_series")
            for k, v in m.metadata.items()
        }
        errors = []
        for event in result.get_step_failure_events():
            error = event.step_failure_data.error
            while error.cause is not None:  # pyright: ignore[reportOptionalMemberAccess]
                error = error.cause  # pyright: ignore[reportOptionalMemberAccess]
            errors.append(error.message.strip())  # pyright: ignore[reportOptionalMemberAccess]
        return result.success, metadata, "\n".join(errors)


def test_asset_exists_only_when_a_server_is_configured_and_the_url_is_in_its_code_version(
    pipeline_output: PipelineOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    graph = build_definitions(str(pipeline_output.root)).resolve_asset_graph()
    assert DICOMWEB_KEY not in graph.get_all_asset_keys()
    versions = []
    for url in ("http://127.0.0.1:1/dicom-web", "http://127.0.0.1:2/dicom-web/"):
        monkeypatch.setenv(URL_ENV, url)
        graph = build_definitions(str(pipeline_output.root)).resolve_asset_graph()
        node = graph.get(DICOMWEB_KEY)
        assert dg.AssetKey("dicom_validation") in node.parent_keys
        versions.append(node.code_version)
    assert versions[0] != versions[1]


def test_round_trip_stores_every_instance_byte_for_byte(
    pipeline_output: PipelineOutput,
    empty_orthanc: OrthancServer,
    credentials: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(URL_ENV, empty_orthanc.dicomweb_url)
    files = pipeline_output.sm_files + pipeline_output.ann_files
    ok, metadata, error = _run_asset(pipeline_output)
    assert ok, error
    assert metadata["instances"] == metadata["instances_stored"] == len(files)
    assert metadata["bytes_sent"] == sum(p.stat().st_size for p in files)
    assert metadata["verified_frames"] == len(pipeline_output.sm_files)
    assert metadata["verified_annotation_objects"] == len(pipeline_output.ann_files)
    assert metadata["seconds"] > 0 and metadata["server"] == empty_orthanc.dicomweb_url
    assert empty_orthanc.instance_count() == len(files)
    for path in files:  # what Orthanc stored is our file, read back through its own REST API
        stored = _stored_file(
            empty_orthanc, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        )
        assert stored is not None and hashlib.sha256(stored).hexdigest() == _sha(path), path.name


def test_publishing_again_stores_nothing_and_adds_no_duplicates(
    pipeline_output: PipelineOutput,
    empty_orthanc: OrthancServer,
    credentials: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(URL_ENV, empty_orthanc.dicomweb_url)
    first = _run_asset(pipeline_output)
    count = empty_orthanc.instance_count()
    ok, metadata, error = _run_asset(pipeline_output)
    assert first[0] and ok, (first[2], error)
    assert (
        metadata["instances_stored"]
        == metadata["instances_replaced"]
        == metadata["bytes_sent"]
        == 0
    )
    assert metadata["instances_unchanged"] == metadata["instances"] == count
    assert metadata["state"] == "already on the server"
    assert empty_orthanc.instance_count() == count


def test_a_changed_instance_replaces_the_old_copy_and_the_report_says_so(
    pipeline_output: PipelineOutput, empty_orthanc: OrthancServer, credentials: None, tmp_path: Path
) -> None:
    slide = tmp_path / pipeline_output.slide_id
    shutil.copytree(pipeline_output.slide_dir, slide)
    first = publish_slide(slide_instances(slide / "sm", slide / "ann"), empty_orthanc.dicomweb_url)
    count = empty_orthanc.instance_count()
    changed = min((slide / "ann").glob("*.dcm"))
    ds = dcmread(changed)
    ds.ContentDescription = "changed after publishing"  # same UIDs, other content
    ds.save_as(changed)
    report = publish_slide(slide_instances(slide / "sm", slide / "ann"), empty_orthanc.dicomweb_url)
    assert len(first.stored) == count
    assert report.replaced == [str(ds.SOPInstanceUID)] and not report.stored
    assert len(report.unchanged) == count - 1
    assert empty_orthanc.instance_count() == count
    assert hashlib.sha256(_stored_file(empty_orthanc, str(ds.SOPInstanceUID))).hexdigest() == _sha(  # pyright: ignore[reportArgumentType]
        changed
    )


def test_a_wrong_password_fails_with_the_servers_answer_and_changes_nothing(
    pipeline_output: PipelineOutput, empty_orthanc: OrthancServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(URL_ENV, empty_orthanc.dicomweb_url)
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    before = {p: _sha(p) for p in pipeline_output.all_files}
    ok, metadata, error = _run_asset(pipeline_output)
    assert not ok and not metadata
    assert "401" in error and empty_orthanc.dicomweb_url in error, error
    assert empty_orthanc.instance_count() == 0
    assert {p: _sha(p) for p in pipeline_output.all_files} == before


def test_instances_the_server_drops_are_named(
    pipeline_output: PipelineOutput, tmp_path: Path, credentials: None
) -> None:
    """Orthanc's own Lua filter refuses annotation objects, yet Orthanc 1.10's STOW-RS answers
    success for them: only the QIDO-RS check after storing finds out, and names each one."""
    from bms_pipeline_tests.orthanc import missing_reason

    if missing_reason():
        pytest.skip(missing_reason())  # pyright: ignore[reportArgumentType]
    script = tmp_path / "refuse_ann.lua"
    script.write_text(
        "function ReceivedInstanceFilter(dicom, origin, info)\n"
        "  return dicom.Modality ~= 'ANN'\nend\n"
    )
    with running_orthanc(tmp_path / "orthanc", extra={"LuaScripts": [str(script)]}) as server:
        with pytest.raises(DicomwebError) as raised:
            publish_slide(
                slide_instances(
                    pipeline_output.slide_dir / "sm", pipeline_output.slide_dir / "ann"
                ),
                server.dicomweb_url,
            )
        message = str(raised.value)
        assert "does not list" in message and "ann/" in message, message
        assert message.count(".dcm (SOP Instance UID ") == len(pipeline_output.ann_files), message
        assert server.dicomweb_url in message
        assert server.instance_count() == len(pipeline_output.sm_files)  # the images went in


def test_a_server_that_is_down_fails_after_bounded_retries(
    pipeline_output: PipelineOutput, credentials: None
) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    before = {p: _sha(p) for p in pipeline_output.all_files}
    with pytest.raises(DicomwebError) as raised:
        publish_slide(
            slide_instances(pipeline_output.slide_dir / "sm", pipeline_output.slide_dir / "ann"),
            url,
            attempts=2,
        )
    message = str(raised.value)
    assert url in message and "after 2 attempts" in message and "ConnectionError" in message, (
        message
    )
    assert {p: _sha(p) for p in pipeline_output.all_files} == before
