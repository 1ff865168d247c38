"""The index tables are idc-index's, column for column, and idc-index's queries run on them.

Schemas are compared with the ``*_schema.json`` files of the ``idc-index-data`` wheel;
value formats with IDC's published BMDeep rows (the wheel's ``idc_index.parquet``); names
of SOP classes and transfer syntaxes with the mappings in the wheel's ``idc_index.sql``.
Expected values are read from the written files with pydicom and highdicom here, never
taken from the tables under test.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb
import highdicom as hd
import idc_index_data
import polars as pl
import pydicom
import pytest
import yaml

from bms_pipeline.core.annotations import base_level_dataset, build_ann_series
from bms_pipeline.core.bigquery import bigquery_dir
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.dicom.idc_conversion import convert_layout_slide
from bms_pipeline.core.index import build_dicom_index
from bms_pipeline.core.index.write import write_dicom_index
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.core.slide_bounds import SlideBounds
from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline_tests.conftest import COLLECTION, SLIDE_ID, ConvertedSlide
from bms_pipeline_tests.helpers import PATIENT

WHEEL = Path(idc_index_data.__file__).parent
IDC_TABLES = {  # our table -> the wheel's schema file stem
    "index": "idc_index",
    "sm_index": "sm_index",
    "sm_instance_index": "sm_instance_index",
    "ann_index": "ann_index",
    "ann_group_index": "ann_group_index",
}
BMDEEP = "bonemarrowwsi_pediatricleukemia"
ONLY_IDC = {  # columns whose values only IDC assigns (releases, buckets, CRDC UUIDs)
    "index": [
        "analysis_result_id",
        "series_init_idc_version",
        "series_revised_idc_version",
        "aws_bucket",
        "crdc_series_uuid",
        "series_aws_url",
    ],
    "sm_instance_index": ["crdc_instance_uuid"],
}
_BQ_ALIASES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN", "STRUCT": "RECORD"}


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Written:
    layout: DataLayout
    collection: CollectionConfig
    files: list[Path]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """Three demo slides (two of one patient) converted with dates kept, annotated, indexed."""
    dataset = write_demo_dataset(tmp_path_factory.mktemp("index"), slides=3, seed=3)
    layout = dataset.layout
    raw = yaml.safe_load(layout.collection_yaml.read_text())
    raw["deidentification"]["keep_dates"] = True  # so StudyDate/SeriesDate have a value
    layout.collection_yaml.write_text(yaml.safe_dump(raw))
    collection = CollectionConfig.load(layout.collection_yaml)
    for slide_id in sorted(dataset.slides):
        convert_layout_slide(layout, collection, slide_id)
        base = base_level_dataset(layout.sm_dir(slide_id))
        build_ann_series(
            slide_id,
            layout,
            collection.collection_id,
            base,
            SlideBounds.of(openslide_properties(layout.mrxs(slide_id))).offset,
            (int(base.TotalPixelMatrixColumns), int(base.TotalPixelMatrixRows)),
            algorithm_name="nucleus detector",
            algorithm_version="1",
        )
    index = build_dicom_index(
        layout.out / "dicom", collection.collection_id, collection.doi, collection.license
    )
    write_dicom_index(index, layout)
    files = sorted(p for p in (layout.out / "dicom").rglob("*.dcm"))
    return Written(layout, collection, files)


def _query(written: Written, sql: str) -> list[tuple]:
    with duckdb.connect(str(written.layout.duckdb_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def _table(written: Written, name: str) -> pl.DataFrame:
    return pl.read_parquet(written.layout.tables_dir / f"{name}.parquet")


@pytest.fixture(scope="module")
def headers(written: Written) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in written.files]


@pytest.fixture(scope="module")
def ann_groups(written: Written) -> list[dict[str, object]]:
    """Every annotation group as highdicom reads it, with its series and referenced slide."""
    groups = []
    for path in written.files:
        ds = pydicom.dcmread(path)
        if ds.Modality != "ANN":
            continue
        ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ds)
        for group in ann.get_annotation_groups():
            algorithm = group.algorithm_identification
            groups.append(
                {
                    "series": str(ds.SeriesInstanceUID),
                    "referenced": str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID),
                    "patient": str(ds.PatientID),
                    "number": group.number,
                    "label": group.label,
                    "count": len(group.get_graphic_data(ann.AnnotationCoordinateType)),
                    "graphic": group.graphic_type.value,
                    "category": group.annotated_property_category,
                    "type": group.annotated_property_type,
                    "generation": str(group.AnnotationGroupGenerationType),
                    "algorithm": str(algorithm[0].AlgorithmName) if algorithm else None,
                }
            )
    return groups


# --------------------------------------------------------------------------- schemas


def _wheel_schema(stem: str) -> list[tuple[str, str, str]]:
    columns = json.loads((WHEEL / f"{stem}_schema.json").read_text())["columns"]
    return [  # pyright: ignore[reportReturnType]
        (c["name"], _BQ_ALIASES.get(c["type"], c["type"]), c.get("mode") or "NULLABLE")
        for c in columns
    ]


def _duckdb_type(name: str, type_: str) -> tuple[str, str, str]:
    """A DuckDB column type as BigQuery's (type, mode): ``X[]`` is REPEATED X."""
    mode = "REPEATED" if type_.endswith("[]") else "NULLABLE"
    base = type_.removesuffix("[]")
    if base.startswith("STRUCT"):
        return name, "RECORD", mode
    mapped = {
        "VARCHAR": "STRING",
        "BIGINT": "INTEGER",
        "INTEGER": "INTEGER",
        "DOUBLE": "FLOAT",
        "FLOAT": "FLOAT",
        "BOOLEAN": "BOOLEAN",
        "DATE": "DATE",
    }
    if base.startswith("TIMESTAMP"):
        return name, "TIMESTAMP", mode
    return name, mapped[base], mode


def _describe(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str, str]]:
    return [_duckdb_type(row[0], row[1]) for row in con.execute(f"DESCRIBE {relation}").fetchall()]


@pytest.mark.parametrize("table", sorted(IDC_TABLES))
def test_written_tables_have_exactly_the_idc_index_data_schemas(
    written: Written, table: str
) -> None:
    expected = _wheel_schema(IDC_TABLES[table])
    assert len(expected) >= 3
    parquet = written.layout.tables_dir / f"{table}.parquet"
    with duckdb.connect() as con:
        assert _describe(con, f"SELECT * FROM read_parquet('{parquet}')") == expected
    with duckdb.connect(str(written.layout.duckdb_path), read_only=True) as con:
        assert _describe(con, f'"{table}"') == expected
    bigquery = json.loads((bigquery_dir(written.layout) / f"{table}.schema.json").read_text())
    assert [(f["name"], f["type"], f["mode"]) for f in bigquery] == expected


def test_our_own_tables_are_beside_idc_s_never_inside(written: Written) -> None:
    idc_columns = {name for stem in IDC_TABLES.values() for name, _, _ in _wheel_schema(stem)}
    with duckdb.connect(str(written.layout.duckdb_path), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        ours = sorted(tables - set(IDC_TABLES))
        assert {"bms_instance_paths", "bms_sm_tiles", "bms_ann_references"} <= set(ours)
        assert all(name.startswith("bms_") for name in ours)
        paths = {name for name, _, _ in _describe(con, "bms_instance_paths")}
    assert {"series_path", "instance_path"} <= paths
    assert not {"series_path", "instance_path"} & idc_columns  # so they can only be ours
    load = (bigquery_dir(written.layout) / "load.sh").read_text()
    for name in [*IDC_TABLES, *ours]:
        assert f'.{name}" ' in load


def test_instance_paths_name_every_file_relative_to_the_output_root(
    written: Written, headers: list[pydicom.Dataset]
) -> None:
    paths = _table(written, "bms_instance_paths")
    out = written.layout.out
    expected = {
        (
            p.relative_to(out).as_posix(),
            str(ds.SOPInstanceUID),
            str(ds.SeriesInstanceUID),
            p.stat().st_size,
            p.relative_to(out).parts[1],
        )
        for p, ds in zip(written.files, headers, strict=True)
    }
    got = {
        (
            r["instance_path"],
            r["SOPInstanceUID"],
            r["SeriesInstanceUID"],
            r["instance_size"],
            r["slide_id"],
        )
        for r in paths.iter_rows(named=True)
    }
    assert got == expected and paths.height == len(written.files)
    assert all(not Path(p).is_absolute() and (out / p).is_file() for p in paths["instance_path"])
    assert set(paths["series_path"]) == {str(Path(p).parent) for p in paths["instance_path"]}


# --------------------------------------------------------------------------- index values


def _sql_case(sql: str, start: str, end: str) -> dict[str, str]:
    """The ``WHEN "uid" THEN "name"`` pairs of idc_index.sql between two markers."""
    body = sql[sql.index(start) : sql.index(end)]
    return dict(re.findall(r'WHEN "([\d.]+)" THEN "([^"]+)"', body))


def _iso(da: str) -> str | None:
    return f"{da[:4]}-{da[4:6]}-{da[6:]}" if da else None


def test_index_values_are_derived_from_the_headers_as_idc_index_data_does(
    written: Written, headers: list[pydicom.Dataset]
) -> None:
    sql = (WHEEL / "idc_index.sql").read_text()
    sop_names = _sql_case(sql, "CASE SOPClassUID", "AS sop_class_name")
    syntax_names = _sql_case(sql, "AS sop_class_name", "AS transfer_syntax_name")
    assert not set(sop_names) & set(syntax_names)
    assert sop_names["1.2.840.10008.5.1.4.1.1.77.1.6"] and syntax_names["1.2.840.10008.1.2.1"]
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path, ds in zip(written.files, headers, strict=True):
        series[str(ds.SeriesInstanceUID)].append((path, ds))
    index = _table(written, "index")
    assert sorted(index["SeriesInstanceUID"]) == sorted(series)
    dated = 0
    for row in index.iter_rows(named=True):
        members = series[row["SeriesInstanceUID"]]
        ds = members[0][1]
        syntaxes = sorted({str(d.file_meta.TransferSyntaxUID) for _, d in members})
        photometric = sorted(
            {
                str(d.PhotometricInterpretation)
                for _, d in members
                if "PhotometricInterpretation" in d
            }
        )
        representation = sorted(
            {str(d.PixelRepresentation) for _, d in members if "PixelRepresentation" in d}
        )
        assert row["collection_id"] == written.collection.collection_id
        assert row["PatientID"] == ds.PatientID and row["StudyInstanceUID"] == ds.StudyInstanceUID
        assert row["SOPClassUID"] == ds.SOPClassUID
        assert row["sop_class_name"] == sop_names[ds.SOPClassUID]
        assert row["TransferSyntaxUID"] == ",".join(syntaxes)
        assert row["transfer_syntax_name"] == ",".join(sorted(syntax_names[s] for s in syntaxes))
        assert row["PhotometricInterpretation"] == (",".join(photometric) or None)
        assert row["PixelRepresentation"] == (",".join(representation) or None)
        assert row["StudyDate"] == _iso(ds.get("StudyDate", ""))
        assert row["SeriesDate"] == _iso(ds.get("SeriesDate", ""))
        dated += row["StudyDate"] is not None
        assert row["SeriesNumber"] == str(ds.SeriesNumber)
        assert row["SeriesDescription"] == ds.SeriesDescription
        assert row["Modality"] == ds.Modality
        assert (row["Manufacturer"], row["ManufacturerModelName"]) == (
            ds.get("Manufacturer") or None,
            ds.get("ManufacturerModelName") or None,
        )
        assert row["PatientAge"] == ds.PatientAge and row["PatientSex"] == ds.PatientSex
        assert row["BodyPartExamined"] == (ds.get("BodyPartExamined") or None)
        assert row["instanceCount"] == len(members)
        assert row["series_size_MB"] == pytest.approx(
            sum(p.stat().st_size for p, _ in members) / 1e6
        )
        assert row["source_DOI"] == written.collection.doi
        assert row["license_short_name"] == written.collection.license
    assert dated > 0  # keep_dates: the formats above were exercised with real dates
    for table, columns in ONLY_IDC.items():
        frame = _table(written, table)
        assert frame.height > 0
        assert all(frame[c].null_count() == frame.height for c in columns)


def test_index_values_have_the_formats_of_idc_s_published_bmdeep_rows(written: Written) -> None:
    real = pl.read_parquet(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).filter(  # pyright: ignore[reportArgumentType]
        pl.col("collection_id") == BMDEEP
    )
    assert real.height > 1000 and set(real["Modality"]) == {"SM", "ANN"}
    ours = _table(written, "index")
    assert ours.schema == real.schema  # same polars types, column for column
    # Attributes where we reproduce IDC: one published value per modality, and ours equal.
    same = [
        "collection_id",
        "source_DOI",
        "StudyDescription",
        "SOPClassUID",
        "sop_class_name",
        "TransferSyntaxUID",
        "transfer_syntax_name",
        "PhotometricInterpretation",
        "PixelRepresentation",
        "BodyPartExamined",
        "analysis_result_id",
        "license_short_name",
    ]
    for modality in ("SM", "ANN"):
        published = real.filter(pl.col("Modality") == modality).select(same).unique()
        assert published.height == 1, published
        mine = ours.filter(pl.col("Modality") == modality).select(same).unique()
        assert mine.to_dicts() == published.to_dicts(), modality
    assert set(real.filter(pl.col("Modality") == "ANN")["instanceCount"]) == {1}
    assert set(ours.filter(pl.col("Modality") == "ANN")["instanceCount"]) == {1}
    formats = {
        "SeriesNumber": r"\d+",
        "PatientAge": r"\d{3}[DWMY]",
        "PatientSex": r"[FMO]",
        "StudyDate": r"\d{4}-\d{2}-\d{2}",
        "SeriesDate": r"\d{4}-\d{2}-\d{2}",
    }
    for column, pattern in formats.items():
        assert real[column].drop_nulls().str.contains(f"^{pattern}$").all(), column
        assert ours[column].drop_nulls().len() > 0, column
        assert ours[column].drop_nulls().str.contains(f"^{pattern}$").all(), column


# --------------------------------------------------------------------------- SM and ANN values


def _using_substances(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    """(meaning, CSD:VALUE) of every 'Using substance' (SCT 424361007) item, found by walking."""
    found = set()
    for element in ds.SpecimenDescriptionSequence[0].iterall():
        if element.keyword != "SpecimenPreparationStepContentItemSequence":
            continue
        for item in element.value:
            name = item.ConceptNameCodeSequence[0]
            if (name.CodingSchemeDesignator, name.CodeValue) == ("SCT", "424361007"):
                code = item.ConceptCodeSequence[0]
                found.add((code.CodeMeaning, f"{code.CodingSchemeDesignator}:{code.CodeValue}"))
    return sorted(found)


def test_sm_index_rows_come_from_every_instance_of_the_series(
    written: Written, headers: list[pydicom.Dataset]
) -> None:
    sm = [ds for ds in headers if ds.Modality == "SM"]
    sm_index = {
        r["SeriesInstanceUID"]: r for r in _table(written, "sm_index").iter_rows(named=True)
    }
    assert set(sm_index) == {str(ds.SeriesInstanceUID) for ds in sm}
    for uid, row in sm_index.items():
        members = [ds for ds in sm if ds.SeriesInstanceUID == uid]
        base = max(members, key=lambda d: int(d.TotalPixelMatrixColumns))
        stains = sorted({s for d in members for s in _using_substances(d)})
        assert stains and row["staining_usingSubstance_CodeMeaning"] == [m for m, _ in stains]
        assert row["staining_usingSubstance_code_designator_value_str"] == [c for _, c in stains]
        assert row["embeddingMedium_CodeMeaning"] == [] and row["tissueFixative_CodeMeaning"] == []
        assert row["ContainerIdentifier"] == base.ContainerIdentifier
        assert row["max_TotalPixelMatrixColumns"] == base.TotalPixelMatrixColumns
        assert row["max_TotalPixelMatrixRows"] == base.TotalPixelMatrixRows
        spacing = Decimal(
            str(base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0])
        )
        exponent = spacing.adjusted() - 1  # two significant figures
        assert row["min_PixelSpacing_2sf"] == float(
            spacing.quantize(Decimal(10) ** exponent, rounding=ROUND_HALF_UP)
        )
        lens = Decimal(str(base.OpticalPathSequence[0].ObjectiveLensPower))
        assert row["ObjectiveLensPower"] == int(lens.to_integral_value(ROUND_HALF_UP))
        site = base.SpecimenDescriptionSequence[0].PrimaryAnatomicStructureSequence[0]
        assert row["primaryAnatomicStructure_code_designator_value_str"] == (
            f"{site.CodingSchemeDesignator}:{site.CodeValue}"
        )
        assert row["primaryAnatomicStructure_CodeMeaning"] == site.CodeMeaning
        light = base.OpticalPathSequence[0].IlluminationTypeCodeSequence[0]
        assert row["illuminationType_code_designator_value_str"] == (
            f"{light.CodingSchemeDesignator}:{light.CodeValue}"
        )
        diagnosis = base.AdmittingDiagnosesCodeSequence[0]
        assert row["admittingDiagnosis_CodeMeaning"] == diagnosis.CodeMeaning
    instances = _table(written, "sm_instance_index")
    assert sorted(instances["SOPInstanceUID"]) == sorted(str(d.SOPInstanceUID) for d in sm)
    for row in instances.iter_rows(named=True):
        (ds,) = [d for d in sm if d.SOPInstanceUID == row["SOPInstanceUID"]]
        assert row["ImageType"] == list(ds.ImageType)
        assert row["TransferSyntaxUID"] == ds.file_meta.TransferSyntaxUID
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert row["PixelSpacing_0"] == (
            float(measures.PixelSpacing[0]) if "PixelSpacing" in measures else None
        )
        assert row["staining_usingSubstance_CodeMeaning"] == [m for m, _ in _using_substances(ds)]


def test_ann_tables_hold_every_group_highdicom_reads(
    written: Written, ann_groups: list[dict[str, object]], headers: list[pydicom.Dataset]
) -> None:
    groups = _table(written, "ann_group_index")
    assert groups.height == len(ann_groups) > 0
    by_key = {
        (r["SeriesInstanceUID"], r["AnnotationGroupNumber"]): r
        for r in groups.iter_rows(named=True)
    }
    for group in ann_groups:
        row = by_key[(group["series"], group["number"])]
        category, prop_type = group["category"], group["type"]
        assert row["AnnotationGroupLabel"] == group["label"]
        assert row["NumberOfAnnotations"] == group["count"]
        assert row["GraphicType"] == group["graphic"]
        assert row["AnnotationGroupGenerationType"] == group["generation"]
        assert row["AlgorithmName"] == group["algorithm"]
        assert (
            row["AnnotationPropertyCategory_code"]
            == f"{category.scheme_designator}:{category.value}"  # pyright: ignore[reportAttributeAccessIssue]
        )
        assert row["AnnotationPropertyCategory_CodeMeaning"] == category.meaning  # pyright: ignore[reportAttributeAccessIssue]
        assert (
            row["AnnotationPropertyType_code"] == f"{prop_type.scheme_designator}:{prop_type.value}"  # pyright: ignore[reportAttributeAccessIssue]
        )
        assert row["AnnotationPropertyType_CodeMeaning"] == prop_type.meaning  # pyright: ignore[reportAttributeAccessIssue]
    ann = {r["SeriesInstanceUID"]: r for r in _table(written, "ann_index").iter_rows(named=True)}
    expected = {str(ds.SeriesInstanceUID): ds for ds in headers if ds.Modality == "ANN"}
    assert set(ann) == set(expected)
    for uid, ds in expected.items():
        assert ann[uid]["AnnotationCoordinateType"] == ds.AnnotationCoordinateType
        assert (
            ann[uid]["referenced_SeriesInstanceUID"]
            == ds.ReferencedSeriesSequence[0].SeriesInstanceUID
        )
    references = _table(written, "bms_ann_references")
    for row in references.iter_rows(named=True):
        ds = expected[row["SeriesInstanceUID"]]
        assert row["referenced_SOPInstanceUID"] == (
            ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        )
        assert row["numberOfAnnotationGroups"] == len(ds.AnnotationGroupSequence)


def test_the_default_policy_leaves_dates_null_and_one_sm_series_is_indexed(
    converted: ConvertedSlide,
) -> None:
    out = converted.result.sm_dir.parent
    index = build_dicom_index(out, COLLECTION.collection_id, COLLECTION.doi, COLLECTION.license)
    (series,) = index.index.to_dicts()
    assert series["PatientID"] == PATIENT and series["Modality"] == "SM"
    assert series["instanceCount"] == len(converted.result.files)
    assert series["StudyDate"] is None and series["SeriesDate"] is None
    (sm,) = index.sm_index.to_dicts()
    assert sm["ContainerIdentifier"] == SLIDE_ID
    assert (
        sm["max_TotalPixelMatrixColumns"],
        sm["max_TotalPixelMatrixRows"],
    ) == converted.truth.bounds[2:]
    flavors = {tuple(t)[2] for t in index.sm_instance_index["ImageType"].to_list()}
    assert {"VOLUME", "OVERVIEW"} <= flavors
    assert index.ann_index.height == 0 and index.ann_group_index.height == 0


# --------------------------------------------------------------------------- idc-index queries
# As written in ImagingDataCommons/imaging-data-commons-skill, references/
# digital_pathology_guide.md (idc-index 0.13.0, IDC v25), with only the collection id and
# search words filled in; they run on bms.duckdb as they run in idc-index's DuckDB.


def _sm_series(headers: list[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    """Each SM series' base level (its largest VOLUME instance)."""
    out: dict[str, pydicom.Dataset] = {}
    for ds in headers:
        if ds.Modality == "SM" and "VOLUME" in ds.ImageType:
            uid = str(ds.SeriesInstanceUID)
            if uid not in out or ds.TotalPixelMatrixColumns > out[uid].TotalPixelMatrixColumns:
                out[uid] = ds
    return out


def test_query_sm_series_with_specific_properties(
    written: Written, headers: list[pydicom.Dataset]
) -> None:
    rows = _query(
        written,
        """
        SELECT
            i.collection_id,
            i.PatientID,
            s.ObjectiveLensPower,
            s.min_PixelSpacing_2sf
        FROM sm_index s
        JOIN index i ON s.SeriesInstanceUID = i.SeriesInstanceUID
        WHERE s.ObjectiveLensPower >= 40
        ORDER BY s.min_PixelSpacing_2sf
        LIMIT 20
    """,
    )
    bases = _sm_series(headers).values()
    expected = [
        (written.collection.collection_id, str(b.PatientID))
        for b in bases
        if float(b.OpticalPathSequence[0].ObjectiveLensPower) >= 40
    ]
    assert len(expected) == 3
    assert sorted((r[0], r[1]) for r in rows) == sorted(expected)
    assert {r[2] for r in rows} == {40}
    assert [r[3] for r in rows] == sorted(r[3] for r in rows) and all(0 < r[3] < 0.01 for r in rows)


def test_query_filter_by_specimen_preparation(
    written: Written, headers: list[pydicom.Dataset]
) -> None:
    rows = _query(
        written,
        f"""
        SELECT
            i.PatientID,
            s.staining_usingSubstance_CodeMeaning as staining,
            s.embeddingMedium_CodeMeaning as embedding,
            s.tissueFixative_CodeMeaning as fixative
        FROM sm_index s
        JOIN index i ON s.SeriesInstanceUID = i.SeriesInstanceUID
        WHERE i.collection_id = '{written.collection.collection_id}'
          AND array_to_string(s.staining_usingSubstance_CodeMeaning, ', ') LIKE '%giemsa%'
        LIMIT 10
    """,
    )
    bases = _sm_series(headers).values()
    expected = sorted(
        (str(b.PatientID), [m for m, _ in _using_substances(b)], [], [])
        for b in bases
        if any("giemsa" in m for m, _ in _using_substances(b))
    )
    assert len(expected) == 3 and sorted(rows) == [tuple(e) for e in expected]
    counts = _query(
        written,
        """
        SELECT
            i.collection_id,
            s.embeddingMedium_CodeMeaning as embedding,
            COUNT(*) as slide_count
        FROM sm_index s
        JOIN index i ON s.SeriesInstanceUID = i.SeriesInstanceUID
        GROUP BY i.collection_id, embedding
        ORDER BY i.collection_id, slide_count DESC
    """,
    )
    assert counts == [(written.collection.collection_id, [], len(bases))]


def test_query_sm_by_modality_from_the_main_index(
    written: Written, headers: list[pydicom.Dataset]
) -> None:
    rows = _query(
        written,
        """
        SELECT i.collection_id, i.PatientID, s.ObjectiveLensPower, s.min_PixelSpacing_2sf
        FROM index i
        JOIN sm_index s ON i.SeriesInstanceUID = s.SeriesInstanceUID
        LIMIT 10
    """,
    )
    modality = _query(written, "SELECT SeriesInstanceUID FROM index WHERE Modality = 'SM'")
    assert sorted(r[0] for r in modality) == sorted(_sm_series(headers))
    assert sorted(r[1] for r in rows) == sorted(
        str(b.PatientID) for b in _sm_series(headers).values()
    )


def test_query_annotation_group_statistics(
    written: Written, ann_groups: list[dict[str, object]]
) -> None:
    rows = _query(
        written,
        """
        SELECT
            GraphicType,
            SUM(NumberOfAnnotations) as total_annotations,
            COUNT(*) as group_count
        FROM ann_group_index
        GROUP BY GraphicType
        ORDER BY total_annotations DESC
    """,
    )
    totals, counts = Counter(), Counter()
    for group in ann_groups:
        totals[group["graphic"]] += group["count"]  # pyright: ignore[reportOperatorIssue]
        counts[group["graphic"]] += 1
    assert rows == [(g, totals[g], counts[g]) for g, _ in totals.most_common()]
    assert rows[0][0] == "RECTANGLE"


def test_query_annotations_with_source_slide_context(
    written: Written, ann_groups: list[dict[str, object]]
) -> None:
    rows = _query(
        written,
        """
        SELECT
            i.collection_id,
            g.GraphicType,
            g.AnnotationPropertyType_CodeMeaning,
            g.AlgorithmName,
            g.NumberOfAnnotations
        FROM ann_group_index g
        JOIN ann_index a ON g.SeriesInstanceUID = a.SeriesInstanceUID
        JOIN index i ON a.referenced_SeriesInstanceUID = i.SeriesInstanceUID
        WHERE g.AlgorithmName IS NOT NULL
        LIMIT 10
    """,
    )
    automatic = [g for g in ann_groups if g["algorithm"] is not None]
    assert automatic and all(g["generation"] == "AUTOMATIC" for g in automatic)
    expected = sorted(
        (
            written.collection.collection_id,
            g["graphic"],
            g["type"].meaning,  # pyright: ignore[reportAttributeAccessIssue]
            g["algorithm"],
            g["count"],
        )
        for g in automatic
    )
    assert len(rows) == min(10, len(expected))
    assert set(rows) <= set(expected)


def test_query_annotation_groups_by_label(
    written: Written, ann_groups: list[dict[str, object]]
) -> None:
    rows = _query(
        written,
        """
        SELECT
            g.SeriesInstanceUID,
            g.AnnotationGroupLabel,
            g.GraphicType,
            g.NumberOfAnnotations,
            g.AlgorithmName
        FROM ann_group_index g
        WHERE LOWER(g.AnnotationGroupLabel) LIKE '%blast%'
        ORDER BY g.NumberOfAnnotations DESC
    """,
    )
    expected = [
        (g["series"], g["label"], g["graphic"], g["count"], g["algorithm"])
        for g in ann_groups
        if "blast" in str(g["label"]).lower()
    ]
    assert expected and sorted(rows) == sorted(expected)
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)
    in_collection = _query(
        written,
        f"""
        SELECT
            i.collection_id,
            g.AnnotationGroupLabel,
            g.GraphicType,
            g.NumberOfAnnotations,
            g.AnnotationPropertyType_CodeMeaning
        FROM ann_group_index g
        JOIN ann_index a ON g.SeriesInstanceUID = a.SeriesInstanceUID
        JOIN index i ON a.SeriesInstanceUID = i.SeriesInstanceUID
        WHERE i.collection_id = '{written.collection.collection_id}'
          AND LOWER(g.AnnotationGroupLabel) LIKE '%blast%'
        ORDER BY g.NumberOfAnnotations DESC
    """,
    )
    assert sorted(r[1:4] for r in in_collection) == sorted(e[1:4] for e in expected)


def test_query_slides_and_their_annotations(
    written: Written, ann_groups: list[dict[str, object]], headers: list[pydicom.Dataset]
) -> None:
    rows = _query(
        written,
        f"""
        SELECT
            i.collection_id,
            s.ObjectiveLensPower,
            g.AnnotationGroupLabel,
            g.NumberOfAnnotations,
            g.GraphicType
        FROM ann_group_index g
        JOIN ann_index a ON g.SeriesInstanceUID = a.SeriesInstanceUID
        JOIN sm_index s ON a.referenced_SeriesInstanceUID = s.SeriesInstanceUID
        JOIN index i ON a.SeriesInstanceUID = i.SeriesInstanceUID
        WHERE i.collection_id = '{written.collection.collection_id}'
        ORDER BY g.NumberOfAnnotations DESC
    """,
    )
    bases = _sm_series(headers)
    expected = sorted(
        (
            written.collection.collection_id,
            int(float(bases[g["referenced"]].OpticalPathSequence[0].ObjectiveLensPower)),  # pyright: ignore[reportArgumentType]
            g["label"],
            g["count"],
            g["graphic"],
        )
        for g in ann_groups
    )
    assert sorted(rows) == expected
    discovery = _query(
        written,
        """
        SELECT
            a.SeriesInstanceUID as ann_series,
            a.AnnotationCoordinateType,
            a.referenced_SeriesInstanceUID as source_series
        FROM ann_index a
        LIMIT 10
    """,
    )
    assert len(discovery) == 10 and all(r[1] == "2D" and r[2] in bases for r in discovery)
    patients = _query(
        written,
        f"""
        SELECT
            i.analysis_result_id,
            i.PatientID,
            a.referenced_SeriesInstanceUID as source_slide,
            g.AnnotationGroupLabel,
            g.NumberOfAnnotations,
            g.AlgorithmName
        FROM ann_group_index g
        JOIN ann_index a ON g.SeriesInstanceUID = a.SeriesInstanceUID
        JOIN index i ON a.SeriesInstanceUID = i.SeriesInstanceUID
        WHERE i.collection_id = '{written.collection.collection_id}'
        LIMIT 10
    """,
    )
    by_series = {g["series"]: g["patient"] for g in ann_groups}
    assert len(patients) == 10
    assert all(r[0] is None and r[2] in bases and r[1] in by_series.values() for r in patients)
