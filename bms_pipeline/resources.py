"""Resources: where the data root is and how slides are converted."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.dicom.convert import ConversionSettings
from bms_pipeline.core.layout import DATA_ROOT_ENV, DataLayout


class BmsPipelineResource(dg.ConfigurableResource):
    """The data root (inputs under raw/, outputs under out/) and conversion settings."""

    data_root: str = Field(description="Folder holding collection.yaml, raw/ and out/")
    output_root: str | None = Field(
        default=None,
        description="Where outputs go (default <data_root>/out); may be another filesystem",
    )
    tile_size: int = Field(default=512, description="Output tile size in pixels")
    jpeg_quality: int = Field(default=80, description="JPEG quality of re-encoded tiles")
    workers: int | None = Field(
        default=None,
        description="wsidicomizer threads per conversion (None: cores / concurrent conversions)",
    )

    @property
    def layout(self) -> DataLayout:
        return DataLayout.at(self.data_root, self.output_root)

    def collection(self) -> CollectionConfig:
        return CollectionConfig.load(self.layout.collection_yaml)

    def conversion_settings(self) -> ConversionSettings:
        from bms_pipeline.instance import MachineBudget

        workers = self.workers or MachineBudget.detect().threads_per_conversion
        return ConversionSettings(
            tile_size=self.tile_size, jpeg_quality=self.jpeg_quality, workers=workers
        )


def default_data_root() -> str:
    return os.environ.get(DATA_ROOT_ENV, "data")
