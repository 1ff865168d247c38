"""Resources: where the data and output roots are (paths or URLs) and how slides are converted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.mirax.discovery import FoundSlide

if TYPE_CHECKING:
    from bms_pipeline.core.budget import MachineBudget

    # wsidicomizer takes seconds to import; only the conversion step needs it.
    from bms_pipeline.core.dicom.convert import ConversionSettings


@dataclass
class LocalFiles:
    """What `BmsPipelineResource.files` brought to this worker, and what goes back."""

    layout: DataLayout
    """The local paths: the roots themselves, or their mirrors in scratch."""
    staged: dict[str, Path]
    """Slide id -> its local .mrxs."""
    written: list[Path]
    """Paths of `layout` to publish when the block ends."""

    def mrxs(self, slide_id: str) -> Path:
        return self.staged[slide_id]

    def wrote(self, *paths: Path) -> None:
        """Publish these paths too, once the block ends without an exception."""
        self.written.extend(paths)


class BmsPipelineResource(dg.ConfigurableResource):
    """The data root (inputs under raw/, outputs under out/) and conversion settings.

    Both roots are paths or fsspec URLs. Assets work on `layout`, which is local: the roots
    themselves when they are local folders, otherwise their mirrors in `scratch_dir`. Files
    move between the roots and the mirrors only through `files` (no-ops for local roots).
    """

    data_root: str = Field(description="Folder or URL holding collection.yaml, raw/ and out/")
    output_root: str | None = Field(
        default=None,
        description="Where outputs go (default <data_root>/out); another filesystem or a URL",
    )
    scratch_dir: str | None = Field(
        default=None,
        description="Local scratch for remote roots: staged MIRAX and output mirrors "
        "(default $BMS_SCRATCH or $TMPDIR/bms-pipeline)",
    )
    tile_size: int | None = Field(
        default=None,
        description="Output tile size in pixels (default: conventions.sm.tile_size of "
        "collection.yaml, 1024 as IDC)",
    )
    jpeg_quality: int = Field(default=80, description="JPEG quality of re-encoded tiles")
    workers: int | None = Field(
        default=None,
        description="wsidicomizer threads per conversion (None: the cores, shared among the "
        "conversions holding a wsi_conversion pool slot)",
    )
    _instance: dg.DagsterInstance | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Remember the instance (for the pool's occupancy) and tag the run with this process,
        whatever started it (CLI, UI, sensor, backfill, `dagster asset materialize`), so a run
        whose process died can be found and its pool slot freed (`defs.runs.reap_dead_runs`)."""
        from bms_pipeline.defs.runs import tag_run_with_worker

        self._instance = context.instance
        run = context.run
        if context.instance is not None and run is not None:
            tag_run_with_worker(context.instance, run)

    # -- roots -----------------------------------------------------------------------------
    @property
    def inputs(self):  # -> StorageRoot (imported lazily: fsspec is not needed to load defs)
        from bms_pipeline.core.url_roots import StorageRoot

        return StorageRoot.of(self.data_root, self.scratch_dir)

    @property
    def outputs(self):  # -> StorageRoot
        from bms_pipeline.core.url_roots import StorageRoot

        url = self.output_root
        if url is None:
            url = f"{self.data_root.rstrip('/')}/out"
        return StorageRoot.of(url, self.scratch_dir)

    @property
    def layout(self) -> DataLayout:
        return DataLayout.at(self.inputs.local_root, self.outputs.local_root)

    def _root_of(self, path: Path):  # -> tuple[StorageRoot, str]
        for root in (self.outputs, self.inputs):  # outputs first: out/ may sit below the data root
            try:
                return root, path.relative_to(root.local_root).as_posix()
            except ValueError:
                continue
        raise ValueError(f"{path} is under neither the data root nor the output root")

    @contextlib.contextmanager
    def files(
        self,
        *,
        read: Iterable[Path] = (),
        require: Iterable[Path] = (),
        slides: Iterable[str] = (),
        write: Iterable[Path] = (),
    ) -> Iterator[LocalFiles]:
        """The one way files move between the roots and this worker. Before the block:
        `require` (which must exist) and `read` (which may not) are brought up to date from
        their roots into the local `layout`, and the MIRAX files of `slides` are staged for
        OpenSlide. When the block ends without an exception: `write`, and whatever it adds
        with `LocalFiles.wrote`, are published to their roots (atomically per path). For
        local roots every step is a no-op."""
        for path in require:
            self._fetch(path, required=True)
        for path in read:
            self._fetch(path)
        local = LocalFiles(self.layout, {s: self._stage_slide(s) for s in slides}, [*write])
        yield local
        for path in local.written:
            self._publish(path)

    def listing(self, path: Path) -> dict[str, dict]:
        """Every file at or below a path of `layout` in its root, keyed by path relative to
        the root (no download)."""
        root, rel = self._root_of(path)
        return root.listing(rel)

    def signature(self, path: Path) -> str:
        """What changes when anything at or below a path of `layout` changes in its root."""
        root, rel = self._root_of(path)
        return root.signature([rel])

    def url_of(self, path: Path) -> str:
        """For people: the URL of a local path of `layout` in its root."""
        root, rel = self._root_of(path)
        return root.url_of(rel)

    def _fetch(self, path: Path, required: bool = False) -> Path:
        """Bring a local path of `layout` up to date from its root before reading it."""
        root, rel = self._root_of(path)
        return root.fetch(rel, required=required)

    def _publish(self, path: Path) -> None:
        """Upload a path of `layout` just written to its root (atomically per path)."""
        root, rel = self._root_of(path)
        root.publish(rel)

    def published_patients(self) -> set[str]:
        """Patients with at least one published SM series (a listing, no download)."""
        from bms_pipeline.core.layout import published_slide_ids
        from bms_pipeline.core.slide_id import patient_id_of

        slides = published_slide_ids(self.listing(self.layout.dicom_dir))
        return {patient_id_of(s) for s in slides}

    def _withdraw(self, path: Path) -> bool:
        """Remove a path of `layout` from its root and mirror (see `StorageRoot.withdraw`)."""
        root, rel = self._root_of(path)
        return root.withdraw(rel)

    def withdraw_slide(self, slide_id: str) -> bool:
        """Everything published of a slide refused by the publication gate: its series and
        its validation results (the index and clinical tables follow on their next build)."""
        layout = self.layout
        removed = self._withdraw(layout.slide_dicom_dir(slide_id))
        return self._withdraw(layout.validation_parquet(slide_id)) or removed

    def _stage_slide(self, slide_id: str) -> Path:
        """The slide's local .mrxs, for OpenSlide: in place for a local root, otherwise its
        files (and metadata override files) copied into scratch, unchanged files skipped."""
        layout = self.layout
        if not self.inputs.is_local:
            mrxs = self._fetch(layout.mrxs(slide_id), required=True)
            self._fetch(mrxs.with_suffix(""))
            for path in layout.override_candidates(slide_id):
                self._fetch(path)
            return mrxs
        return layout.mrxs(slide_id)

    def slide_signature(self, slide_id: str) -> str:
        """The slide's cheap change detector, the same value `scan` reports for it."""
        from bms_pipeline.core.dicom.overrides import override_paths
        from bms_pipeline.core.mirax.discovery import remote_slide_signature
        from bms_pipeline.core.mirax.inventory import file_signature

        inputs = self.inputs
        if not inputs.is_local:
            return remote_slide_signature(inputs, slide_id)
        layout = self.layout
        return file_signature(layout.mrxs(slide_id), override_paths(layout.root, slide_id))

    def scan(
        self, settle_seconds: float = 0.0, previous: dict[str, str] | None = None
    ) -> list[FoundSlide]:
        """Every slide under raw/slides, ready or not with the reason (no download)."""
        from bms_pipeline.core.dicom.overrides import override_paths
        from bms_pipeline.core.mirax.discovery import scan_remote_slides, scan_slides

        inputs = self.inputs
        if not inputs.is_local:
            return scan_remote_slides(inputs, settle_seconds, previous)
        layout = self.layout
        return scan_slides(
            layout.slides_dir,
            settle_seconds,
            previous,
            extra_inputs=lambda slide_id: override_paths(layout.root, slide_id),
        )

    # -- configuration ---------------------------------------------------------------------
    def collection(self) -> CollectionConfig:
        return CollectionConfig.load(self._fetch(self.layout.collection_yaml, required=True))

    def collection_inputs(self):  # -> core.versions.CollectionInputs
        """collection.yaml, the clinical rows and the annotation rows, read once, for the
        versions of every slide's outputs."""
        from bms_pipeline.core.versions import CollectionInputs

        layout = self.layout
        self._fetch(layout.clinical_csv)
        self._fetch(layout.annotations_dir)
        return CollectionInputs.read(self.collection(), layout.clinical_csv, layout.annotations_dir)

    def collection_sources(self) -> dict:
        """What the collection-wide outputs' versions are made of
        (`core.versions.collection_versions`): a listing of the outputs, no download."""
        layout = self.layout
        self._fetch(layout.clinical_csv)
        self._fetch(layout.lab_values_xlsx)
        return {
            "collection": self.collection(),
            "clinical_csv": layout.clinical_csv,
            "lab_workbook": layout.lab_values_xlsx,
            "published_patients": self.published_patients(),
            "dicom_signature": self.signature(layout.dicom_dir),
            "validation_signature": self.signature(layout.validation_dir),
        }

    def published_slides(self) -> set[str]:
        """Slides with a published SM series (a listing, no download)."""
        from bms_pipeline.core.layout import published_slide_ids

        return published_slide_ids(self.listing(self.layout.dicom_dir))

    def conversion_settings(self, collection: CollectionConfig | None = None) -> ConversionSettings:
        """The collection's SM conventions, this resource's overrides and the threads the
        machine and the pool leave this conversion."""
        from bms_pipeline.core.budget import MachineBudget
        from bms_pipeline.core.dicom.convert import ConversionSettings

        workers = self.workers or conversion_threads(self._instance, MachineBudget.detect())
        sm = (collection or self.collection()).conventions.sm
        return ConversionSettings.for_collection(
            sm,
            tile_size=self.tile_size or sm.tile_size,
            jpeg_quality=self.jpeg_quality,
            workers=workers,
        )


def conversion_threads(instance: dg.DagsterInstance | None, budget: MachineBudget) -> int:
    """The budget's threads beside the conversions running now (those holding a slot of the
    conversion pool, this one included), read from any entry point's instance."""
    from bms_pipeline.core.budget import CONVERSION_POOL

    running = 1
    if instance is not None:
        try:
            info = instance.event_log_storage.get_concurrency_info(CONVERSION_POOL)
            running = max(1, len(info.active_run_ids))
        except Exception:  # noqa: BLE001 - an instance without pools: count this one alone
            running = 1
    return budget.threads_beside(running)
