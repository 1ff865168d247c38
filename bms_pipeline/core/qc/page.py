"""The collection page, `out/qc/index.html`: every published slide with its THUMBNAIL and
numbers, the patients left out of the tables, and the slides not published with the reason.

A static page (no script, no server): the thumbnails are JPEG files beside it, named by the
SM series' SeriesInstanceUID, which changes whenever the series' content does, so a rebuild
decodes only the THUMBNAILs of series it has not shown before. The numbers come from the
tables the collection assets wrote (the idc-index-like index and the validation messages),
the pictures from the published THUMBNAIL instances. The folder is built in staging and
swapped into place whole.
"""

from __future__ import annotations

import html
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from bms_pipeline.core.atomic_outputs import replace_dir_atomically
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.qc.pictures import PICTURE_ERRORS, jpeg_bytes, thumbnail_picture

THUMBNAILS = "thumbnails"


@dataclass(frozen=True)
class NotPublished:
    """A slide with no published series, and why (the publication gate's reason...)."""

    slide_id: str
    reason: str


@dataclass(frozen=True)
class SlideRow:
    slide_id: str
    patient_id: str
    series_instance_uid: str
    thumbnail: str | None  # path of the THUMBNAIL instance relative to the output root
    instances: int
    levels: int
    base_size: tuple[int, int] | None
    annotations: tuple[tuple[str, int], ...]  # (ANN series file stem, annotations)
    errors: int
    warnings: int
    unexplained_warnings: int


@dataclass(frozen=True)
class PageResult:
    path: Path
    slides: int
    thumbnails_made: int
    thumbnails_reused: int
    thumbnail_bytes: int
    missing_thumbnails: tuple[str, ...]  # slides shown without one, with the reason


def _read(tables: Path, name: str) -> pl.DataFrame | None:
    path = tables / f"{name}.parquet"
    return pl.read_parquet(path) if path.is_file() else None


def slide_rows(out_dir: Path) -> list[SlideRow]:
    """One row per slide with a published SM series, from the index and validation tables
    under `out_dir/tables` (none before `dicom_index` has run)."""
    tables = DataLayout.of_outputs(out_dir).tables_dir
    paths = _read(tables, "bms_instance_paths")
    instances = _read(tables, "sm_instance_index")
    if paths is None or instances is None or paths.is_empty():
        return []
    groups = _read(tables, "ann_group_index")
    messages = _read(tables, "validation_messages")
    sm = paths.filter(pl.col("Modality") == "SM").join(
        instances.select(
            "SOPInstanceUID", "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows"
        ),
        on="SOPInstanceUID",
        how="left",
    )
    ann = paths.filter(pl.col("Modality") == "ANN")
    if groups is not None and not ann.is_empty():
        per_series = groups.group_by("SeriesInstanceUID").agg(pl.col("NumberOfAnnotations").sum())
        ann = ann.join(per_series, on="SeriesInstanceUID", how="left")
    else:
        ann = ann.with_columns(pl.lit(0).alias("NumberOfAnnotations"))
    rows: list[SlideRow] = []
    for slide_id in sorted(sm["slide_id"].unique().to_list()):
        mine = sm.filter(pl.col("slide_id") == slide_id)
        flavors = [
            t[2] if t is not None and len(t) > 2 else "" for t in mine["ImageType"].to_list()
        ]
        volume = mine.filter(pl.Series(flavors) == "VOLUME")
        thumbnail = [
            p
            for p, f in zip(mine["instance_path"].to_list(), flavors, strict=True)
            if f == "THUMBNAIL"
        ]
        base = volume.sort("TotalPixelMatrixColumns", descending=True).head(1)
        annotations = ann.filter(pl.col("slide_id") == slide_id).sort("instance_path")
        if messages is not None:
            own = messages.filter(pl.col("slide_id") == slide_id)
            warn = own.filter(pl.col("level") == "Warning")
            counts = (
                own.filter(pl.col("level") == "Error").height,
                warn.height,
                warn.filter(pl.col("known_noise").is_null()).height,
            )
        else:
            counts = (0, 0, 0)
        rows.append(
            SlideRow(
                slide_id=slide_id,
                patient_id=str(mine["PatientID"][0]),
                series_instance_uid=str(mine["SeriesInstanceUID"][0]),
                thumbnail=thumbnail[0] if thumbnail else None,
                instances=mine.height,
                # A level concatenated over several instances is one level.
                levels=volume.select("TotalPixelMatrixColumns", "TotalPixelMatrixRows")
                .unique()
                .height,
                base_size=(
                    (int(base["TotalPixelMatrixColumns"][0]), int(base["TotalPixelMatrixRows"][0]))
                    if base.height
                    else None
                ),
                annotations=tuple(
                    (Path(p).stem, int(n or 0))
                    for p, n in zip(
                        annotations["instance_path"].to_list(),
                        annotations["NumberOfAnnotations"].to_list(),
                        strict=True,
                    )
                ),
                errors=counts[0],
                warnings=counts[1],
                unexplained_warnings=counts[2],
            )
        )
    return rows


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
td { white-space: nowrap; }
td.n { text-align: right; }
td.reason { white-space: normal; }
td.bad { background: #fdd; }
img { max-width: 256px; max-height: 160px; display: block; }
code { font-size: 90%; }
"""


def render_page(
    title: str,
    rows: Sequence[SlideRow],
    thumbnails: Mapping[str, str],
    left_out: Mapping[str, Sequence[str]],
    not_published: Sequence[NotPublished],
) -> str:
    """The page as HTML; `thumbnails`: slide id -> image path relative to the page."""
    total_annotations = sum(n for r in rows for _, n in r.annotations)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}: quality control</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p id="summary">{len(rows)} slide(s) published, {sum(r.instances for r in rows)} SM '
        f"instance(s), {total_annotations} annotation(s), "
        f"{sum(r.errors for r in rows)} validation error(s), "
        f"{sum(r.warnings for r in rows)} warning(s) "
        f"({sum(r.unexplained_warnings for r in rows)} not explained); "
        f"{len(not_published)} slide(s) not published.</p>",
        '<h2>Slides</h2><table id="slides"><thead><tr><th>THUMBNAIL</th><th>slide</th>'
        "<th>instances</th><th>levels</th><th>base level (px)</th><th>annotations per series</th>"
        "<th>dciodvfy/dcentvfy errors</th><th>warnings (not explained)</th></tr></thead><tbody>",
    ]
    for r in rows:
        image = thumbnails.get(r.slide_id)
        picture = (
            f'<img src="{_esc(image)}" alt="THUMBNAIL of {_esc(r.slide_id)}">'
            if image
            else "no THUMBNAIL"
        )
        size = f"{r.base_size[0]} &times; {r.base_size[1]}" if r.base_size else "-"
        annotations = "<br>".join(f"{_esc(name)}: {n}" for name, n in r.annotations) or "none"
        out.append(
            f'<tr class="slide" data-slide="{_esc(r.slide_id)}"><td>{picture}</td>'
            f"<td><code>{_esc(r.slide_id)}</code></td>"
            f'<td class="n">{r.instances}</td><td class="n">{r.levels}</td>'
            f'<td class="n">{size}</td><td>{annotations}</td>'
            f'<td class="n{" bad" if r.errors else ""}">{r.errors}</td>'
            f'<td class="n">{r.warnings} ({r.unexplained_warnings})</td></tr>'
        )
    out.append("</tbody></table>")
    out.append('<h2>Slides not published</h2><table id="not-published">')
    out.append("<thead><tr><th>slide</th><th>reason</th></tr></thead><tbody>")
    for n in not_published:
        out.append(
            f"<tr><td><code>{_esc(n.slide_id)}</code></td>"
            f'<td class="reason">{_esc(n.reason)}</td></tr>'
        )
    if not not_published:
        out.append('<tr><td colspan="2">none</td></tr>')
    out.append("</tbody></table>")
    out.append('<h2>Patients left out of the tables</h2><table id="left-out">')
    out.append("<thead><tr><th>table</th><th>patients without a published slide</th></tr>")
    out.append("</thead><tbody>")
    for table, patients in sorted(left_out.items()):
        shown = ", ".join(f"<code>{_esc(p)}</code>" for p in patients) or "none"
        out.append(f"<tr><td>{_esc(table)}</td><td>{len(patients)}: {shown}</td></tr>")
    if not left_out:
        out.append('<tr><td colspan="2">none</td></tr>')
    out.append("</tbody></table></body></html>")
    return "\n".join(out) + "\n"


def build_collection_page(
    out_dir: Path,
    title: str,
    left_out: Mapping[str, Sequence[str]] | None = None,
    not_published: Sequence[NotPublished] = (),
) -> PageResult:
    """Write `out_dir/qc/index.html` and its thumbnails: staged, then swapped in whole."""
    rows = slide_rows(out_dir)
    layout = DataLayout.of_outputs(out_dir)
    final = layout.qc_dir
    staged = layout.staging_dir / f"qc-{uuid.uuid4().hex}"
    (staged / THUMBNAILS).mkdir(parents=True)
    made = reused = size = 0
    shown: dict[str, str] = {}
    missing: list[str] = []
    try:
        for row in rows:
            name = f"{THUMBNAILS}/{row.series_instance_uid}.jpg"
            earlier = final / name
            if earlier.is_file():
                shutil.copy2(earlier, staged / name)
                reused += 1
            elif row.thumbnail is not None:
                try:
                    data = jpeg_bytes(thumbnail_picture([out_dir / row.thumbnail]))
                except PICTURE_ERRORS as exc:
                    missing.append(f"{row.slide_id}: {exc}")
                    continue
                (staged / name).write_bytes(data)
                made += 1
            else:
                missing.append(f"{row.slide_id}: no THUMBNAIL instance")
                continue
            size += (staged / name).stat().st_size
            shown[row.slide_id] = name
        page = staged / "index.html"
        page.write_text(
            render_page(title, rows, shown, left_out or {}, not_published), encoding="utf-8"
        )
        replace_dir_atomically(staged, final)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return PageResult(final / "index.html", len(rows), made, reused, size, tuple(missing))
