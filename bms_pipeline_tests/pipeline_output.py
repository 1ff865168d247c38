"""A demo collection converted by the real pipeline (the `slides_job` through Dagster), once per
test session, for the tests that read its SM and ANN files with other tools or publish them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from bms_pipeline.core.synthetic.demo import DemoDataset, write_demo_dataset


@dataclass(frozen=True)
class PipelineOutput:
    dataset: DemoDataset
    slide_id: str  # a slide with expert sessions, so every ANN series kind is there

    @property
    def root(self) -> Path:
        return self.dataset.layout.root

    @property
    def slide_dir(self) -> Path:
        return self.dataset.layout.slide_dicom_dir(self.slide_id)

    @property
    def sm_files(self) -> list[Path]:
        return sorted(self.dataset.layout.sm_dir(self.slide_id).glob("*.dcm"))

    @property
    def ann_files(self) -> list[Path]:
        return sorted(self.dataset.layout.ann_dir(self.slide_id).glob("*.dcm"))

    @property
    def all_files(self) -> list[Path]:
        return sorted(self.dataset.layout.out.joinpath("dicom").rglob("*.dcm"))


def convert_demo(
    root: Path, slides: int = 2, seed: int = 5, sm_conventions: dict[str, object] | None = None
) -> PipelineOutput:
    """`sm_conventions`: set under `conventions.sm` in the demo's collection.yaml."""
    import yaml

    from bms_pipeline.definitions import build_definitions
    from bms_pipeline.orchestration.operations import plan_slides, register_slides, run_slide

    dataset = write_demo_dataset(root, slides=slides, seed=seed)
    if sm_conventions:
        path = dataset.layout.root / "collection.yaml"
        config = yaml.safe_load(path.read_text())
        config.setdefault("conventions", {}).setdefault("sm", {}).update(sm_conventions)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    defs = build_definitions(str(root))
    with dg.instance_for_test() as instance:
        plans = plan_slides(instance, defs, dataset.layout)
        register_slides(instance, [p.slide_id for p in plans])
        for plan in plans:
            outcome = run_slide(instance, defs, plan)
            assert outcome.ok, outcome
    with_sessions = [
        s
        for s in sorted(dataset.slides)
        if any(p.name.startswith("session_") for p in dataset.layout.ann_dir(s).glob("*.dcm"))
    ]
    return PipelineOutput(dataset, (with_sessions or sorted(dataset.slides))[0])
