"""The data-root layout of DESIGN.md sections 2 and 3, in one place.

Everything below `raw/` is input and is never written; everything below `out/` is output.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DATA_ROOT_ENV = "BMS_DATA_ROOT"
OUTPUT_ROOT_ENV = "BMS_OUTPUT_ROOT"


def default_data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, "data")).resolve()


@dataclass(frozen=True)
class DataLayout:
    """Inputs under `root`; outputs under `out_root` (default `root/out`), which may be on
    another filesystem: outputs are staged and renamed within `out_root` only."""

    root: Path
    out_root: Path | None = None

    @classmethod
    def at(
        cls,
        root: str | os.PathLike[str] | None = None,
        out_root: str | os.PathLike[str] | None = None,
    ) -> DataLayout:
        out_root = out_root if out_root is not None else os.environ.get(OUTPUT_ROOT_ENV) or None
        return cls(
            Path(root).resolve() if root is not None else default_data_root(),
            Path(out_root).resolve() if out_root is not None else None,
        )

    @classmethod
    def of_outputs(cls, out_root: Path) -> DataLayout:
        """A layout for an output root alone (its input paths are not to be used)."""
        return cls(out_root, out_root)

    @property
    def dagster_home(self) -> Path:
        """The persistent Dagster instance of `bms-pipeline run` (DAGSTER_HOME)."""
        return self.root / ".dagster"

    # inputs
    @property
    def collection_yaml(self) -> Path:
        return self.root / "collection.yaml"

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def slides_dir(self) -> Path:
        return self.raw / "slides"

    def mrxs(self, slide_id: str) -> Path:
        return self.slides_dir / f"{slide_id}.mrxs"

    @property
    def clinical_dir(self) -> Path:
        return self.raw / "clinical"

    @property
    def clinical_csv(self) -> Path:
        return self.clinical_dir / "clinical.csv"

    @property
    def lab_values_xlsx(self) -> Path:
        return self.clinical_dir / "lab_values.xlsx"

    @property
    def annotations_dir(self) -> Path:
        return self.raw / "annotations"

    def override_candidates(self, slide_id: str) -> list[Path]:
        """Where the slide's metadata override files would be (see `override_names`)."""
        return [self.root / name for name in override_names(slide_id)]

    # outputs
    @property
    def out(self) -> Path:
        return self.out_root if self.out_root is not None else self.root / "out"

    @property
    def dicom_dir(self) -> Path:
        """Every slide's published series, `dicom/<slide_id>/{sm,ann}/`."""
        return self.out / "dicom"

    def slide_dicom_dir(self, slide_id: str) -> Path:
        return self.dicom_dir / slide_id

    def sm_dir(self, slide_id: str) -> Path:
        return self.slide_dicom_dir(slide_id) / "sm"

    def ann_dir(self, slide_id: str) -> Path:
        return self.slide_dicom_dir(slide_id) / "ann"

    @property
    def staging_dir(self) -> Path:
        """Scratch space on the output filesystem, so the final move is a rename."""
        return self.out / ".staging"

    @property
    def validation_dir(self) -> Path:
        return self.out / "validation"

    def validation_parquet(self, slide_id: str) -> Path:
        return self.validation_dir / f"{slide_id}.parquet"

    @property
    def tables_dir(self) -> Path:
        return self.out / "tables"

    def table_parquet(self, name: str) -> Path:
        """A collection table (`index`, `<collection>_clinical`, `validation_messages`...)."""
        return self.tables_dir / f"{name}.parquet"

    @property
    def bigquery_dir(self) -> Path:
        """BigQuery schemas of the tables and their load script (`core.bigquery`)."""
        return self.out / "bigquery"

    @property
    def releases_ledger(self) -> Path:
        """The numbered releases (`core.releases.Ledger`)."""
        return self.out / "releases" / "ledger.json"

    @property
    def qc_dir(self) -> Path:
        """The collection page, `qc/index.html`, and its thumbnails (`core.qc.page`)."""
        return self.out / "qc"

    @property
    def atomic_write_dirs(self) -> tuple[Path, ...]:
        """The folders whose files are written atomically beside a temporary file
        (`core.atomic_outputs`), where a killed writer may have left one."""
        return (self.out, self.tables_dir, self.validation_dir, self.out / "index")

    @property
    def duckdb_path(self) -> Path:
        return self.out / "bms.duckdb"


def override_names(slide_id: str) -> tuple[str, str]:
    """The metadata override files of a slide, relative to the data root, in the order they
    apply: the collection's, then the slide's own."""
    return ("overrides/collection.json", f"overrides/{slide_id}.json")


def published_slide_ids(relative_dicom_files: Iterable[str]) -> set[str]:
    """Slides with a published SM series, from file paths relative to the output root
    (`dicom/<slide_id>/sm/<file>.dcm`); staging and withdrawn folders start with a dot."""
    found: set[str] = set()
    for name in relative_dicom_files:
        parts = PurePosixPath(name).parts
        if (
            len(parts) == 4
            and parts[0] == "dicom"
            and not parts[1].startswith(".")
            and parts[2] == "sm"
            and parts[3].endswith(".dcm")
        ):
            found.add(parts[1])
    return found
