"""Nothing leaves staging that is not proven clean, on the first run and on every rerun.

The slides go through `bms-pipeline run` itself (its `main`, against the persistent
instance under the data root), as a user runs them: the bypass this guards against was a
second `run` that found the refused series already in `out/` and treated it as fresh.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from bms_pipeline import cli
from bms_pipeline.core.synthetic.demo import write_demo_dataset

LEAKED_NAME = "DOE^JANE 1984-03-07"


def _plant_leak(slidedat: Path) -> None:
    """SLIDE_NAME carries a patient name, and the scanner serial (allow-listed, so it reaches
    DeviceSerialNumber) carries the same text: the name leaks through a header."""
    text = slidedat.read_bytes().decode("utf-8-sig")
    text = re.sub(r"SLIDE_NAME = [^\r\n]*", f"SLIDE_NAME = {LEAKED_NAME}", text)
    text = re.sub(r"SCANNER_HARDWARE_ID = [^\r\n]*", f"SCANNER_HARDWARE_ID = {LEAKED_NAME}", text)
    slidedat.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))


def _files_mentioning(out: Path, needle: str) -> list[str]:
    return sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if needle in str(p.relative_to(out))
    )


def _bytes_holding(out: Path, value: bytes) -> list[str]:
    return sorted(str(p) for p in out.rglob("*") if p.is_file() and value in p.read_bytes())


def _about(console: str, slide_id: str) -> str:
    """What the summary says of a slide: its table row and its fault lines."""
    return "\n".join(line for line in console.splitlines() if line.startswith(slide_id))


def _assert_page_lists(out: Path, published: set[str], refused: str) -> None:
    """The collection page shows the published slides and the refused one with the gate's
    reason (the property's name, never its value)."""
    page = (out / "qc" / "index.html").read_text(encoding="utf-8")
    shown = set(re.findall(r'<tr class="slide" data-slide="([^"]+)"', page))
    assert shown == published
    not_published = page.split('id="not-published"')[1].split("</table>")[0]
    assert refused in not_published and "mirax.GENERAL.SLIDE_NAME" in not_published
    assert LEAKED_NAME not in page


def _run(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["run", "--data-root", str(root)])
    return code, capsys.readouterr().out


def test_a_leaking_slide_is_never_published_and_a_rerun_does_not_get_around_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("DAGSTER_HOME", "BMS_DATA_ROOT", "BMS_OUTPUT_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    dataset = write_demo_dataset(tmp_path / "data", slides=3, seed=5)
    layout = dataset.layout
    leaky, clean, later = sorted(dataset.slides)
    _plant_leak(layout.mrxs(leaky).with_suffix("") / "Slidedat.ini")
    out = layout.out

    for attempt in (1, 2):
        code, console = _run(layout.root, capsys)
        assert code == 1, console
        said = _about(console, leaky)
        # The first run refuses it; the second finds it resting on the same inputs.
        assert ("FAILED" if attempt == 1 else "REFUSED") in said, said
        assert "not published" in said, said
        assert "mirax.GENERAL.SLIDE_NAME" in said and "byte " in said, said
        assert LEAKED_NAME not in console  # the summary names the property, never the value
        assert _files_mentioning(out, leaky) == [], f"run {attempt}"
        assert _bytes_holding(out, LEAKED_NAME.encode()) == [], f"run {attempt}"
        for good in (clean, later):
            assert any(layout.sm_dir(good).glob("*.dcm")) and any(
                layout.ann_dir(good).glob("*.dcm")
            )
        with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
            containers = {
                r[0] for r in con.execute("select ContainerIdentifier from sm_index").fetchall()
            }
        assert containers == {clean, later}
        _assert_page_lists(out, published={clean, later}, refused=leaky)

    # A slide published before and leaking now is withdrawn, from out/ and from the tables.
    _plant_leak(layout.mrxs(later).with_suffix("") / "Slidedat.ini")
    code, console = _run(layout.root, capsys)
    assert code == 1
    assert "withdrawn" in _about(console, later)
    assert _files_mentioning(out, later) == []
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        containers = {
            r[0] for r in con.execute("select ContainerIdentifier from sm_index").fetchall()
        }
        patients = {r[0] for r in con.execute("select PatientID from index").fetchall()}
    assert containers == {clean}
    assert patients == {clean[:32]}
    _assert_page_lists(out, published={clean}, refused=later)
    assert _bytes_holding(out, LEAKED_NAME.encode()) == []
    # Tables are the same wherever the roots lie: no absolute path in any table or script.
    tables = [*(out / "tables").glob("*.parquet"), *(out / "bigquery").iterdir()]
    assert tables and [str(p) for p in tables if str(tmp_path).encode() in p.read_bytes()] == []


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_the_same_inputs_in_two_folders_give_byte_identical_dicom_trees(tmp_path: Path) -> None:
    """SM and ANN files, names and bytes, from two data roots at different paths and times."""
    import dagster as dg

    from bms_pipeline.definitions import build_definitions
    from bms_pipeline.orchestration.operations import plan_slides, register_slides, run_slide

    trees = []
    for folder in ("first", "second/deeper"):
        dataset = write_demo_dataset(tmp_path / folder / "data", slides=2, seed=21)
        defs = build_definitions(str(dataset.layout.root))
        with dg.instance_for_test() as instance:
            plans = plan_slides(instance, defs, dataset.layout)
            register_slides(instance, [p.slide_id for p in plans])
            assert all(run_slide(instance, defs, p).ok for p in plans)
        trees.append(_tree(dataset.layout.out / "dicom"))
    assert trees[0].keys() == trees[1].keys()
    assert any(name.split("/")[1] == "ann" for name in trees[0])
    different = [name for name in trees[0] if trees[0][name] != trees[1][name]]
    assert different == []


def test_the_sensor_leaves_a_refused_slide_resting_until_its_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under the daemon a refused slide used to be reconverted on every tick."""

    import dagster as dg

    from bms_pipeline.definitions import build_definitions
    from bms_pipeline.defs.resources import BmsPipelineResource
    from bms_pipeline.defs.slides.sensors import new_slides_sensor

    for variable in ("DAGSTER_HOME", "BMS_DATA_ROOT", "BMS_OUTPUT_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    dataset = write_demo_dataset(tmp_path / "data", slides=2, seed=6)
    layout = dataset.layout
    leaky = sorted(dataset.slides)[0]
    slidedat = layout.mrxs(leaky).with_suffix("") / "Slidedat.ini"
    clean_text = slidedat.read_bytes()
    _plant_leak(slidedat)
    code, console = _run(layout.root, capsys)
    assert code == 1 and "not published" in _about(console, leaky), console

    defs = build_definitions(str(layout.root))
    with dg.DagsterInstance.from_config(str(layout.root / ".dagster")) as instance:
        cursor: list[str | None] = [None]

        def tick():
            """One evaluation, its cursor kept (a slide seen unchanged twice has settled)."""
            context = dg.build_sensor_context(
                instance=instance,
                cursor=cursor[0],
                definitions=defs,
                resources={"bms": BmsPipelineResource(data_root=str(layout.root))},
            )
            result = new_slides_sensor(context)
            assert isinstance(result, dg.SensorResult)
            cursor[0] = result.cursor
            return list(result.run_requests or [])

        for _ in range(3):  # never requested again on the same inputs
            assert [r.partition_key for r in tick()] == []
        slidedat.write_bytes(clean_text)  # the scanner's export fixed
        assert tick() == []  # still settling
        (request,) = tick()
        assert request.partition_key == leaky
        assert request.tags["bms/reason"] == "slide files changed on disk"
