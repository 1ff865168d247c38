"""The slide is conformant: zero dciodvfy/dcentvfy errors."""

import dagster as dg

from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.validation.assets import dicom_validation


@dg.asset_check(asset=dicom_validation, blocking=True, partitions_def=slides_partitions)
def no_dicom_validation_errors(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """Fails on any Error from dciodvfy or dcentvfy for the slide's files, series or study."""
    import polars as pl

    from bms_pipeline.core.validation.report import errors_of

    verdict = bms.layout.validation_parquet(context.partition_key)
    with bms.files(require=[verdict]):
        errors = errors_of(pl.read_parquet(verdict))
    return dg.AssetCheckResult(
        passed=errors.height == 0,
        metadata={
            "errors": errors.height,
            "first_errors": dg.MetadataValue.json(
                errors.select("file", "tool", "message").head(10).to_dicts()
            ),
        },
        description=f"{errors.height} error(s)" if errors.height else "no errors",
    )
