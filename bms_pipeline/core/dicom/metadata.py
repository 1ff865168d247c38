"""The IDC metadata of an SM series: wsidicom's model plus a post-processor for the rest.

Three hooks of wsidicomizer are used, each for what it is meant for:

- `build_wsi_metadata` gives the user metadata that overrides what wsidicomizer reads from
  the MIRAX file: patient, study, series, equipment and the full specimen description;
- `build_pre_processor` removes what the file says about the slide's identity before it is
  merged (wsidicomizer turns SLIDE_NAME into SeriesDescription and SLIDE_ID into
  ContainerIdentifier; the slide name can carry a patient name), and the dates when the
  de-identification policy says so;
- `build_post_processor` adds the attributes wsidicom does not model: PatientAge, the
  clinical-trial module, the admitting diagnosis and the de-identification method codes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from pydicom import Dataset
from pydicom.sr.coding import Code
from wsidicom.conceptcode import (
    AnatomicPathologySpecimenTypesCode,
    ContainerTypeCode,
    SpecimenCollectionProcedureCode,
    SpecimenSamplingProcedureCode,
    SpecimenStainsCode,
)
from wsidicom.metadata import (
    Equipment,
    Patient,
    PatientDeIdentification,
    PatientSex,
    Series,
    Slide,
    SlideSample,
    Specimen,
    Staining,
    Study,
    WsiMetadata,
)
from wsidicom.metadata.sample import Collection
from wsidicomizer.metadata import WsiDicomizerMetadata

from bms_pipeline.core.clinical.patients import PatientClinical
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.dicom.overrides import MetadataOverride, apply_overrides

# DICOM PS3.16 CID 7050 de-identification method codes.
BASIC_PROFILE = Code("113100", "DCM", "Basic Application Confidentiality Profile")
RETAIN_FULL_DATES = Code("113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option")
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

    @property
    def slide_number(self) -> int:
        return int(self.slide_id.split("_")[1])


def sm_series_number(slide_number: int) -> int:
    """SeriesNumbers unique within a patient's study: 100 per slide, SM first, ANN after."""
    return 100 * slide_number + 1


def ann_series_number(slide_number: int, index: int) -> int:
    return 100 * slide_number + 10 + index


def deidentification_methods(collection: CollectionConfig) -> list[Code]:
    methods = [BASIC_PROFILE, RETAIN_PATIENT_CHARACTERISTICS, RETAIN_DEVICE_IDENTITY, CLEAN_DESCRIPTORS]
    if collection.deidentification.keep_dates:
        methods.append(RETAIN_FULL_DATES)
    return methods


def specimen_slide(slide_id: str) -> Slide:
    """Aspiration -> aspirate in a specimen vial -> smear on a microscope slide, MGG stained."""
    aspirate = Specimen(
        identifier=f"{slide_id}_aspirate",
        extraction_step=Collection(method=SpecimenCollectionProcedureCode("Aspiration")),
        type=AnatomicPathologySpecimenTypesCode("Aspirate"),
        container=ContainerTypeCode("Specimen vial"),
    )
    smear = SlideSample(
        identifier=f"{slide_id}_smear",
        anatomical_sites=[BONE_MARROW],
        sampled_from=aspirate.sample(method=SpecimenSamplingProcedureCode("Smear procedure")),
    )
    return Slide(
        identifier=slide_id,
        stainings=[Staining(substances=[SpecimenStainsCode("May-Grunwald Giemsa stain")])],
        samples=[smear],
    )


def equipment_from(properties: Mapping[str, str]) -> Equipment:
    software = properties.get("mirax.GENERAL.SCANNER_SOFTWARE_VERSION")
    return Equipment(
        manufacturer="3DHISTECH",
        model_name=properties.get("mirax.GENERAL.SCANNER_HARDWARE_VERSION"),
        device_serial_number=properties.get("mirax.GENERAL.SCANNER_HARDWARE_ID"),
        software_versions=[software] if software else None,
    )


def build_wsi_metadata(context: SlideContext) -> WsiMetadata:
    """User metadata that overrides the file's, with the override files applied last."""
    collection = context.collection
    ours = WsiDicomizerMetadata(
        study=Study(
            identifier=context.patient_id[:16],
            description=collection.study_description,
        ),
        series=Series(
            number=sm_series_number(context.slide_number),
            description=collection.series_description,
        ),
        patient=Patient(
            identifier=context.patient_id,
            sex=_SEX[context.clinical.sex],
            de_identification=PatientDeIdentification(
                identity_removed=True, methods=deidentification_methods(collection)
            ),
        ),
        equipment=equipment_from(context.properties),
        slide=specimen_slide(context.slide_id),
    )
    return apply_overrides(ours, context.overrides)


def build_pre_processor(collection: CollectionConfig) -> Callable[[WsiDicomizerMetadata], WsiMetadata]:
    """Strip the slide name, the scanner's slide id and (by policy) dates from the file's metadata."""

    def pre_process(metadata: WsiDicomizerMetadata) -> WsiMetadata:
        stripped = replace(
            metadata,
            series=replace(metadata.series, description=None),
            slide=replace(metadata.slide, identifier=None),
            label=replace(metadata.label, text=None, barcode=None),
        )
        if not collection.deidentification.keep_dates:
            # Every image of the slide: the pyramid, the overview and the label.
            stripped = replace(
                stripped,
                study=replace(stripped.study, date=None, time=None),
                pyramid=replace(
                    stripped.pyramid,
                    image=replace(stripped.pyramid.image, acquisition_datetime=None),
                ),
            )
            if stripped.overview is not None and stripped.overview.image is not None:
                stripped = replace(
                    stripped,
                    overview=replace(
                        stripped.overview,
                        image=replace(stripped.overview.image, acquisition_datetime=None),
                    ),
                )
            if stripped.label is not None and stripped.label.image is not None:
                stripped = replace(
                    stripped,
                    label=replace(
                        stripped.label,
                        image=replace(stripped.label.image, acquisition_datetime=None),
                    ),
                )
        return stripped

    return pre_process


def build_post_processor(context: SlideContext) -> Callable[[Dataset, WsiMetadata], Dataset]:
    """Attributes wsidicom does not model."""
    collection = context.collection
    trial = collection.clinical_trial
    clinical = context.clinical

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
            items = []
            for other in trial.other_protocol_ids:
                item = Dataset()
                item.ClinicalTrialProtocolID = other.id
                item.IssuerOfClinicalTrialProtocolID = other.issuer
                items.append(item)
            dataset.OtherClinicalTrialProtocolIDsSequence = items
        if clinical.has_diagnosis:
            code = Dataset()
            code.CodeValue = clinical.ncit_code
            code.CodingSchemeDesignator = NCIT_SCHEME
            code.CodeMeaning = clinical.ncit_meaning
            dataset.AdmittingDiagnosesCodeSequence = [code]
            dataset.AdmittingDiagnosesDescription = clinical.ncit_meaning
        if collection.deidentification.keep_dates:
            # The scan is the series: SeriesDate/Time from SLIDE_CREATIONDATETIME, as StudyDate.
            if dataset.get("StudyDate"):
                dataset.SeriesDate = dataset.StudyDate
                dataset.SeriesTime = dataset.get("StudyTime", "")
        else:
            for keyword in ("StudyDate", "StudyTime"):
                if keyword in dataset:
                    setattr(dataset, keyword, "")  # Type 2: present, empty
            for keyword in ("SeriesDate", "SeriesTime"):
                if keyword in dataset:
                    delattr(dataset, keyword)
        return dataset

    return post_process
