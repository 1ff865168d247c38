"""The IDC metadata of an SM series: wsidicom's model plus a post-processor for the rest.

Three hooks of wsidicomizer are used, each for what it is meant for:

- `build_wsi_metadata` gives the user metadata that overrides what wsidicomizer reads from
  the MIRAX file: patient, study, series, equipment and the full specimen description;
- `build_pre_processor` removes what the file says about the slide's identity before it is
  merged, by the privacy policy of `core.dicom.phi`;
- `build_post_processor` adds the attributes wsidicom does not model: PatientAge, the
  clinical-trial module, the admitting diagnosis and the de-identification method codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.sr.coding import Code
from wsidicom.conceptcode import (  # pyright: ignore[reportMissingTypeStubs]
    AnatomicPathologySpecimenTypesCode,
    ContainerTypeCode,
    IlluminationCode,
    LenseCode,
    SpecimenCollectionProcedureCode,
    SpecimenSamplingProcedureCode,
    SpecimenStainsCode,
)
from wsidicom.metadata import (  # pyright: ignore[reportMissingTypeStubs]
    Equipment,
    Image,
    Objectives,
    OpticalPath,
    Patient,
    PatientDeIdentification,
    PatientSex,
    Pyramid,
    Series,
    Slide,
    SlideSample,
    Specimen,
    Staining,
    Study,
    WsiMetadata,
)
from wsidicom.metadata.sample import Collection  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.metadata import WsiDicomizerMetadata  # pyright: ignore[reportMissingTypeStubs]

from bms_pipeline.core.clinical.patients import PatientClinical
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.conventions import SpecimenIdentifiers
from bms_pipeline.core.dicom.overrides import MetadataOverride, apply_overrides
from bms_pipeline.core.dicom.phi import (
    allowed_properties,
    apply_date_policy,
    strip_identifying_metadata,
)
from bms_pipeline.core.dicom.viewer_compat import viewer_coordinate_systems

# DICOM PS3.16 CID 7050 de-identification method codes.
BASIC_PROFILE = Code("113100", "DCM", "Basic Application Confidentiality Profile")
RETAIN_FULL_DATES = Code(
    "113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option"
)
RETAIN_PATIENT_CHARACTERISTICS = Code("113108", "DCM", "Retain Patient Characteristics Option")
RETAIN_DEVICE_IDENTITY = Code("113109", "DCM", "Retain Device Identity Option")
CLEAN_DESCRIPTORS = Code("113105", "DCM", "Clean Descriptors Option")

BONE_MARROW = Code("14016003", "SCT", "Bone marrow")
NCIT_SCHEME = "NCIt"


_SEX = {"F": PatientSex.F, "M": PatientSex.M, "O": PatientSex.O}


@dataclass(frozen=True)
class SlideContext:
    """Everything the metadata of one slide is made from."""

    collection: CollectionConfig
    slide_id: str
    clinical: PatientClinical
    properties: Mapping[str, str]
    overrides: tuple[MetadataOverride, ...] = ()

    @property
    def patient_id(self) -> str:
        return self.clinical.patient_id


def deidentification_methods(collection: CollectionConfig) -> list[Code]:
    methods = [
        BASIC_PROFILE,
        RETAIN_PATIENT_CHARACTERISTICS,
        RETAIN_DEVICE_IDENTITY,
        CLEAN_DESCRIPTORS,
    ]
    if collection.deidentification.keep_dates:
        methods.append(RETAIN_FULL_DATES)
    return methods


def specimen_slide(
    slide_id: str, patient_id: str, identifiers: SpecimenIdentifiers = "patient"
) -> Slide:
    """Aspiration -> aspirate in a specimen vial -> smear on a microscope slide, MGG stained.

    IDC identifies the specimen and the slide sample by the patient id (one aspirate per
    patient) and the container by the slide id; `identifiers="slide"` names them after the
    slide instead."""
    specimen_id, sample_id = (
        (patient_id, patient_id)
        if identifiers == "patient"
        else (f"{slide_id}_aspirate", f"{slide_id}_smear")
    )
    aspirate = Specimen(
        identifier=specimen_id,
        extraction_step=Collection(method=SpecimenCollectionProcedureCode("Aspiration")),
        type=AnatomicPathologySpecimenTypesCode("Aspirate"),
        container=ContainerTypeCode("Specimen vial"),
    )
    smear = SlideSample(
        identifier=sample_id,
        anatomical_sites=[BONE_MARROW],
        sampled_from=aspirate.sample(method=SpecimenSamplingProcedureCode("Smear procedure")),
    )
    return Slide(
        identifier=slide_id,
        stainings=[Staining(substances=[SpecimenStainsCode("May-Grunwald Giemsa stain")])],
        samples=[smear],
    )


def equipment_from(properties: Mapping[str, str], manufacturer: str = "Mirax") -> Equipment:
    """The scanner: IDC's Manufacturer (`Mirax`), the model, serial and software from
    `SCANNER_*` (allow-listed, so they may reach the headers)."""
    software = properties.get("mirax.GENERAL.SCANNER_SOFTWARE_VERSION")
    return Equipment(
        manufacturer=manufacturer,
        model_name=properties.get("mirax.GENERAL.SCANNER_HARDWARE_VERSION"),
        device_serial_number=properties.get("mirax.GENERAL.SCANNER_HARDWARE_ID"),
        software_versions=[software] if software else None,
    )


def optical_path(properties: Mapping[str, str], lens: str | None) -> OpticalPath:
    """Brightfield, with the objective power from OBJECTIVE_MAGNIFICATION and (IDC) the
    objective's lens type in LensesCodeSequence."""
    power = properties.get("mirax.GENERAL.OBJECTIVE_MAGNIFICATION")
    return OpticalPath(
        illumination_types=[IlluminationCode("Brightfield illumination")],
        objective=Objectives(
            lenses=[LenseCode(lens)] if lens else None,
            objective_power=float(power) if power else None,
        ),
    )


def acquisition_context(properties: Mapping[str, str]) -> Dataset:
    """IDC's TEXT "Comment" (DCM 121106) item with the MIRAX properties as JSON; here only the
    allow-listed ones, never SLIDE_ID, SLIDE_NAME or the scan date."""
    allowed = allowed_properties(properties)
    item = Dataset()
    item.ValueType = "TEXT"
    concept = Dataset()
    concept.CodeValue = "121106"
    concept.CodingSchemeDesignator = "DCM"
    concept.CodeMeaning = "Comment"
    item.ConceptNameCodeSequence = [concept]
    item.TextValue = json.dumps(allowed, sort_keys=True)
    return item


def scan_duration_seconds(properties: Mapping[str, str]) -> float | None:
    """AcquisitionDuration from the scan time (IDC: the property ending in
    `scanning_time_in_sec`)."""
    for key, value in sorted(properties.items()):
        if key.lower().endswith("scanning_time_in_sec"):
            try:
                return float(value)
            except ValueError:
                return None
    return None


def build_wsi_metadata(context: SlideContext) -> WsiMetadata:
    """User metadata that overrides the file's, with the override files applied last."""
    collection = context.collection
    sm = collection.conventions.sm
    ours = WsiDicomizerMetadata(
        study=Study(
            identifier=context.patient_id[:16],
            description=collection.study_description,
        ),
        series=Series(
            number=collection.conventions.series_numbers.for_slide(context.slide_id, ["sm"])["sm"],
            description=collection.series_description,
        ),
        patient=Patient(
            identifier=context.patient_id,
            sex=_SEX[context.clinical.sex],
            de_identification=PatientDeIdentification(
                identity_removed=True, methods=deidentification_methods(collection)
            ),
        ),
        equipment=equipment_from(context.properties, sm.manufacturer),
        slide=specimen_slide(context.slide_id, context.patient_id, sm.specimen_identifiers),
        pyramid=Pyramid(image=Image(), optical_paths=[optical_path(context.properties, sm.lens)]),
    )
    return apply_overrides(ours, context.overrides)


def build_pre_processor(
    collection: CollectionConfig,
) -> Callable[[WsiDicomizerMetadata], WsiMetadata]:
    """The file's metadata without what identifies the slide (the privacy policy), in the
    coordinate system viewers show OpenSlide's image in."""
    keep_dates = collection.deidentification.keep_dates

    def pre_process(metadata: WsiDicomizerMetadata) -> WsiMetadata:
        return viewer_coordinate_systems(strip_identifying_metadata(metadata, keep_dates))

    return pre_process


def build_post_processor(context: SlideContext) -> Callable[[Dataset, WsiMetadata], Dataset]:
    """Attributes wsidicom does not model."""
    collection = context.collection
    trial = collection.clinical_trial
    clinical = context.clinical
    sm_conventions = collection.conventions.sm

    def post_process(dataset: Dataset, metadata: WsiMetadata) -> Dataset:
        dataset.PatientAge = clinical.age
        dataset.PatientIdentityRemoved = "YES"
        dataset.ClinicalTrialSponsorName = trial.sponsor_name
        dataset.ClinicalTrialProtocolID = trial.protocol_id
        dataset.ClinicalTrialProtocolName = trial.protocol_name
        dataset.ClinicalTrialSiteID = trial.site_id
        dataset.ClinicalTrialSiteName = trial.site_name
        dataset.ClinicalTrialSubjectID = clinical.patient_id
        if trial.coordinating_center_name:
            dataset.ClinicalTrialCoordinatingCenterName = trial.coordinating_center_name
        if trial.other_protocol_ids:
            items: list[Dataset] = []
            for other in trial.other_protocol_ids:
                item = Dataset()
                item.ClinicalTrialProtocolID = other.id
                item.IssuerOfClinicalTrialProtocolID = other.issuer
                items.append(item)
            dataset.OtherClinicalTrialProtocolIDsSequence = items
        if sm_conventions.acquisition_context:
            dataset.AcquisitionContextSequence = [acquisition_context(context.properties)]
        duration = scan_duration_seconds(context.properties)
        if duration is not None:
            dataset.AcquisitionDuration = duration
        if clinical.has_diagnosis:
            code = Dataset()
            code.CodeValue = clinical.ncit_code
            code.CodingSchemeDesignator = NCIT_SCHEME
            code.CodeMeaning = clinical.ncit_meaning
            dataset.AdmittingDiagnosesCodeSequence = [code]
            dataset.AdmittingDiagnosesDescription = clinical.ncit_meaning
        apply_date_policy(dataset, collection.deidentification.keep_dates)
        return dataset

    return post_process
