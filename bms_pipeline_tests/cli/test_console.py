"""What a person sees from `bms-pipeline run`: short when all is well, every fault named."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline_tests.cli_runs import cli, finish, start_run
from bms_pipeline_tests.conftest import ConvertedRoot

NOISE = ("alembic", "highdicom", " DEBUG ", "STEP_START", "Traceback")


def test_two_runs_on_a_new_root_both_succeed(cli_converted: ConvertedRoot) -> None:
    first, second = cli_converted.first, cli_converted.second
    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert "waiting for the other `bms-pipeline run` on this data root" in second.stdout
    assert "0 slide(s) to run" in second.stdout  # the first one did the work
    for run in (first, second):
        assert "Traceback" not in run.stderr and "OperationalError" not in run.stderr


def test_console_is_one_line_per_slide_and_a_short_summary(cli_converted: ConvertedRoot) -> None:
    text = cli_converted.first.stdout + cli_converted.first.stderr
    lines = text.splitlines()
    assert not [line for line in lines if any(n in line for n in NOISE)], text
    slides = sorted(p.stem for p in (cli_converted.root / "raw" / "slides").glob("*.mrxs"))
    for i, slide_id in enumerate(slides, 1):
        (progress,) = [line for line in lines if line.startswith(f"[{i}/{len(slides)}] {slide_id}")]
        assert " ok " in progress and "MP/s" in progress
    # + the `conv s` legend and the privacy audit's line
    assert len(lines) <= 14 + 2 * len(slides), text


def test_status_shows_slides_and_collection_assets_up_to_date(cli_converted: ConvertedRoot) -> None:
    """After the runs (the second of which converted nothing), `status` agrees."""
    status = subprocess.run(
        cli("status", "--data-root", str(cli_converted.root)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    slides = [p.stem for p in (cli_converted.root / "raw" / "slides").glob("*.mrxs")]
    for name in [*slides, "clinical_tables", "dicom_index", "validation_report"]:
        assert any(name in line and "up-to-date" in line for line in status.splitlines()), status


def test_collection_input_errors_are_reported_once_before_any_conversion(tmp_path: Path) -> None:
    dataset = write_demo_dataset(tmp_path, slides=1, seed=3)
    yaml_path = dataset.layout.collection_yaml
    lines = yaml_path.read_text(encoding="utf-8").splitlines()
    lines.insert(2, "title: [unclosed")
    yaml_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = finish(start_run(tmp_path))
    assert result.returncode == 2
    (error,) = [line for line in result.stderr.splitlines() if "collection.yaml" in line]
    assert f"{yaml_path}:" in error and "not valid YAML" in error
    assert not (tmp_path / "out").exists()  # nothing converted


def test_an_empty_slide_folder_says_so(tmp_path: Path) -> None:
    (tmp_path / "raw" / "slides").mkdir(parents=True)
    result = subprocess.run(
        cli("run", "--data-root", str(tmp_path)), capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "holds no slides" in result.stderr and "<slide_id>.mrxs" in result.stderr


def test_summary_names_consensus_disagreements_and_which_time_is_which(
    cli_converted: ConvertedRoot,
) -> None:
    """The generator records one tie's consensus against the sessions' votes: the summary
    says so with the cells.csv line; the two times on screen say what they measure."""
    text = cli_converted.first.stdout
    (slide,) = [p.stem for p in (cli_converted.root / "raw" / "slides").glob("*.mrxs")]
    warnings = [line for line in text.splitlines() if "original_consensus_label" in line]
    assert warnings, text
    for line in warnings:
        assert line.startswith(f"{slide}: warning: ann_series: cells.csv line ")
        assert "the sessions' votes give" in line
    (progress,) = [line for line in text.splitlines() if line.startswith(f"[1/1] {slide}")]
    assert re.search(r" \d+\.\d s .* converted in \d+\.\d+ s at ", progress), progress
    assert " conv s " in text and "(conv s: the wsidicomizer conversion alone" in text
