"""Data and output roots given as fsspec URLs: the pipeline on an in-memory object store.

fsspec's `memory://` filesystem is a real fsspec implementation (the one fsspec tests its
own object-store semantics with), so nothing here is mocked: listings, downloads, uploads
and moves go through the same calls an `s3://` or `gs://` root would use.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import fsspec
import pydicom
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.core.url_roots import StorageError, StorageRoot
from bms_pipeline.definitions import build_definitions
from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.sensors import new_slides_sensor
from bms_pipeline.orchestration.operations import plan_slides, run_collection


@pytest.fixture
def bucket() -> Iterator[str]:
    """A fresh prefix in fsspec's process-wide memory store, removed afterwards."""
    url = f"memory://bms-test-{uuid.uuid4().hex[:8]}"
    yield url
    fs = fsspec.filesystem("memory")
    path = url.removeprefix("memory://")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _upload(local: Path, url: str) -> None:
    fs, base = fsspec.core.url_to_fs(url)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{base}/{path.relative_to(local).as_posix()}")


def _remote_hashes(url: str, prefix: str = "") -> dict[str, str]:
    fs, base = fsspec.core.url_to_fs(url)
    root = f"{base}/{prefix}".rstrip("/")
    if not fs.exists(root):
        return {}
    return {
        path.removeprefix(f"{base}/"): hashlib.sha256(fs.cat_file(path)).hexdigest()
        for path in fs.find(root)
    }


def _remote_pixels(url: str, prefix: str) -> dict[str, tuple[str, str]]:
    fs, base = fsspec.core.url_to_fs(url)
    out = {}
    for path in fs.find(f"{base}/{prefix}"):
        ds = pydicom.dcmread(io.BytesIO(fs.cat_file(path)))
        out[path.removeprefix(f"{base}/")] = (
            ds.SOPInstanceUID,
            hashlib.sha256(ds.PixelData).hexdigest(),
        )
    return out


def test_pipeline_runs_with_data_and_output_roots_in_object_storage(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "generated"
    dataset = write_demo_dataset(local, slides=1, seed=11)
    (slide_id,) = dataset.slides
    data_url = f"{bucket}/data"
    out_url = f"{bucket}/published"
    _upload(local, data_url)
    raw_before = _remote_hashes(data_url)
    scratch = tmp_path / "scratch"
    monkeypatch.setenv("BMS_SCRATCH", str(scratch))
    defs = build_definitions(data_url, output_root=out_url)
    bms = defs.resources["bms"]  # pyright: ignore[reportOptionalSubscript]
    assert isinstance(bms, BmsPipelineResource)
    # The layout the assets work on is local: the roots' mirrors in scratch.
    assert bms.layout.root.is_relative_to(scratch) and bms.layout.out.is_relative_to(scratch)

    with dg.instance_for_test() as instance:
        # The sensor lists the bucket (no download) and waits one tick for the files to settle.
        def tick(cursor: str | None):
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"bms": bms}
            )
            return new_slides_sensor(context)

        first = tick(None)
        assert first.run_requests == []  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]
        assert not (bms.layout.slides_dir).exists()
        second = tick(first.cursor)  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]
        assert [r.partition_key for r in second.run_requests] == [slide_id]  # pyright: ignore[reportAttributeAccessIssue, reportOptionalIterable, reportOptionalMemberAccess]
        instance.add_dynamic_partitions(slides_partitions.name, [slide_id])  # pyright: ignore[reportArgumentType]

        result = defs.resolve_job_def("slides_job").execute_in_process(
            partition_key=slide_id, instance=instance
        )
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert evaluations and all(e.passed for e in evaluations)
        (mat,) = result.asset_materializations_for_node("sm_series")
        assert mat.metadata["path"].value == f"{out_url}/dicom/{slide_id}/sm"
        (raw,) = result.asset_materializations_for_node("mrxs_slide")
        assert raw.metadata["path"].value == f"{data_url}/raw/slides/{slide_id}.mrxs"
        # The signature recorded is the one a scan of the bucket gives: nothing to rerun.
        (plan,) = plan_slides(instance, defs, bms.layout)
        assert plan.state == "up-to-date", plan.reason  # pyright: ignore[reportAttributeAccessIssue]

        collection = run_collection(instance, defs)
        assert collection.ok, collection.failures  # pyright: ignore[reportAttributeAccessIssue]

    published = _remote_hashes(out_url)
    sm = [k for k in published if k.startswith(f"dicom/{slide_id}/sm/")]
    ann = [k for k in published if k.startswith(f"dicom/{slide_id}/ann/")]
    assert len(sm) == mat.metadata["instances"].value and ann
    assert f"validation/{slide_id}.parquet" in published
    assert "bms.duckdb" in published and "tables/index.parquet" in published
    assert not [k for k in published if ".partial-" in k]
    # What was published is byte for byte what the steps wrote locally.
    mirror = bms.layout.out
    for name, digest in published.items():
        assert hashlib.sha256((mirror / name).read_bytes()).hexdigest() == digest, name
    # Inputs are only read, and nothing was written beside them.
    assert _remote_hashes(data_url) == raw_before


def test_rerun_replaces_the_published_series_without_duplicates(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "generated"
    dataset = write_demo_dataset(local, slides=1, seed=12)
    (slide_id,) = dataset.slides
    monkeypatch.setenv("BMS_SCRATCH", str(tmp_path / "scratch"))
    # Inputs local, outputs in the bucket.
    defs = build_definitions(str(local), output_root=f"{bucket}/out")
    bms = defs.resources["bms"]  # pyright: ignore[reportOptionalSubscript]
    assert bms.inputs.is_local and not bms.outputs.is_local
    job = defs.resolve_job_def("slides_job")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_partitions.name, [slide_id])  # pyright: ignore[reportArgumentType]
        selection = [dg.AssetKey("mrxs_slide"), dg.AssetKey("sm_series")]
        assert job.execute_in_process(
            partition_key=slide_id, instance=instance, asset_selection=selection
        ).success
        first = _remote_pixels(f"{bucket}/out", f"dicom/{slide_id}/sm")
        staged = bms.layout.mrxs(slide_id)
        assert staged == dataset.layout.mrxs(slide_id)  # a local root is read in place
        assert job.execute_in_process(
            partition_key=slide_id, instance=instance, asset_selection=selection
        ).success
        second = _remote_pixels(f"{bucket}/out", f"dicom/{slide_id}/sm")
    # Deterministic UIDs: the same files with the same pixels, nothing left of the first run
    # beside them (only InstanceCreationTime and the contribution time differ).
    assert first and second == first
    assert not (local / "out").exists()


def test_fetch_downloads_only_changes_and_drops_what_the_remote_lost(
    tmp_path: Path, bucket: str
) -> None:
    root = StorageRoot.of(f"{bucket}/data", tmp_path / "scratch")
    fs = root.fs
    fs.pipe(root.remote("raw/slides/a/Data0000.dat"), b"a" * 10)
    fs.pipe(root.remote("raw/slides/a/Index.dat"), b"index")
    local = root.fetch("raw/slides/a")
    data = local / "Data0000.dat"
    assert data.read_bytes() == b"a" * 10 and (local / "Index.dat").read_bytes() == b"index"
    data_inode = data.stat().st_ino
    before = root.signature(["raw/slides/a"])
    fs.pipe(root.remote("raw/slides/a/Index.dat"), b"index2")
    fs.rm(root.remote("raw/slides/a/Data0000.dat"))
    fs.pipe(root.remote("raw/slides/a/Data0001.dat"), b"b")
    assert root.signature(["raw/slides/a"]) != before
    root.fetch("raw/slides/a")
    assert sorted(p.name for p in local.iterdir()) == ["Data0001.dat", "Index.dat"]
    assert (local / "Index.dat").read_bytes() == b"index2"
    # An unchanged file is not downloaded again (the same inode stays in place).
    fs.pipe(root.remote("raw/slides/a/Data0000.dat"), b"c")
    root.fetch("raw/slides/a")
    kept = (local / "Data0001.dat").stat().st_ino
    root.fetch("raw/slides/a")
    assert (local / "Data0001.dat").stat().st_ino == kept
    assert data_inode != (local / "Data0000.dat").stat().st_ino
    # A file written locally and not yet published (another step's work) is not stale.
    unpublished = local / "Data0002.dat"
    unpublished.write_bytes(b"work in progress")
    root.fetch("raw/slides/a")
    assert unpublished.read_bytes() == b"work in progress"
    with pytest.raises(
        FileNotFoundError, match=f"{bucket}/data/raw/slides/missing.mrxs: not found"
    ):
        root.fetch("raw/slides/missing.mrxs", required=True)


class _FailingUploads(MemoryFileSystem):
    """The memory store, with uploads that fail after a few files.

    A fake only to inject the fault: an upload interrupted part way cannot be provoked on
    a real store from a test. Everything else is fsspec's memory filesystem.
    """

    protocol = ("bmsfailing",)
    budget = 2

    def put_file(self, lpath, rpath, *args, **kwargs):
        if _FailingUploads.budget <= 0:
            raise OSError("connection reset by peer")
        _FailingUploads.budget -= 1
        return super().put_file(lpath, rpath, *args, **kwargs)


def test_a_failed_publish_keeps_the_previous_version(tmp_path: Path, bucket: str) -> None:
    fsspec.register_implementation("bmsfailing", _FailingUploads, clobber=True)
    name = bucket.removeprefix("memory://")
    root = StorageRoot.of(f"bmsfailing://{name}/out", tmp_path / "scratch")
    series = root.local_root / "dicom" / "s" / "sm"
    series.mkdir(parents=True)
    for i in range(2):
        (series / f"{i}.dcm").write_bytes(b"old%d" % i)
    _FailingUploads.budget = 2
    root.publish("dicom/s/sm")
    old = {k: root.fs.cat_file(root.remote(k)) for k in root.listing("dicom/s/sm")}
    assert old == {"dicom/s/sm/0.dcm": b"old0", "dicom/s/sm/1.dcm": b"old1"}
    for i in range(4):
        (series / f"{i}.dcm").write_bytes(b"new%d" % i)
    _FailingUploads.budget = 2
    with pytest.raises(StorageError, match=rf"bmsfailing://{name}/out/dicom/s/sm: upload failed"):
        root.publish("dicom/s/sm")
    now = {k: root.fs.cat_file(root.remote(k)) for k in root.listing("dicom")}
    assert now == old  # no half-new series and no partial upload left behind
    _FailingUploads.budget = 10
    root.publish("dicom/s/sm")
    assert sorted(root.listing("dicom")) == [f"dicom/s/sm/{i}.dcm" for i in range(4)]


def test_publishing_a_missing_local_path_is_an_error_not_a_deletion(
    tmp_path: Path, bucket: str
) -> None:
    root = StorageRoot.of(f"{bucket}/out", tmp_path / "scratch")
    table = root.local_root / "tables" / "index.parquet"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"v1")
    root.publish("tables/index.parquet")
    table.unlink()  # e.g. dropped by another process's fetch before it was published
    with pytest.raises(StorageError, match=r"tables/index.parquet: nothing to publish"):
        root.publish("tables/index.parquet")
    assert root.fs.cat_file(root.remote("tables/index.parquet")) == b"v1"
