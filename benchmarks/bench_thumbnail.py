"""Margins of the THUMBNAIL similarity rule: the lowest score a right THUMBNAIL reaches and
the highest a wrong one reaches, over the foreign MIRAX corpus and the generator's variants.

    python3.12 -m uv run python -m benchmarks.bench_thumbnail [--json F]

Each slide is copied into a temporary folder and converted as `sm_series` converts it (full
IDC metadata, the publication gate). The right score is the gate's own comparison of the
written THUMBNAIL with the pyramid. The wrong ones put other pixels into the same THUMBNAIL
instance (re-encoded with the same tile grid and JPEG settings) and score it the same way:

- `other_region`: the right THUMBNAIL rolled by half its width and height (every place shows
  another area of the same slide);
- `shifted_1/N`: moved by 1/N of its width and height, the uncovered edge background;
- `flipped_h`, `flipped_v`: mirrored;
- `macro`: the slide's macro image (a preview of the whole glass) at the THUMBNAIL's size;
- `preview`: the MIRAX preview where the slide has one, at the THUMBNAIL's size;
- `stock_preview_crop`: wsidicomizer's own THUMBNAIL (its crop of a preview that covers the
  whole canvas) against its own pyramid, on the generator's canvas-preview slide.

`tests` (bms_pipeline_tests/core/test_foreign_corpus.py) assert the same margins hold.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bms_pipeline.core.dicom.convert import ConversionSettings
from bms_pipeline.core.dicom.thumbnail import MIN_THUMBNAIL_CORRELATION, thumbnail_similarity
from bms_pipeline_tests.thumbnail_scores import (
    Scores,
    convert_mrxs,
    copy_corpus_slide,
    corpus_slide_ids,
    generator_variants,
    score_series,
)


def measure(work: Path, slide_ids: Sequence[str] | None = None, generator: bool = True) -> Scores:
    scores = Scores({}, {})
    cases: list[tuple[str, Path, ConversionSettings | None]] = [
        (slide_id, copy_corpus_slide(slide_id, work / "raw" / slide_id), None)
        for slide_id in (slide_ids if slide_ids is not None else corpus_slide_ids())
    ]
    if generator:
        cases += list(generator_variants(work / "generated"))
    for index, (label, mrxs, settings) in enumerate(cases):
        result = convert_mrxs(mrxs, work / "out" / str(index), settings)
        if label == "stock":
            stock, _ = thumbnail_similarity(result.files)
            assert stock is not None
            scores.wrong.setdefault(label, {})["stock_preview_crop"] = stock
            continue
        preview = not label.startswith("generator") or "canvas" in label
        score_series(label, mrxs, result.files, work / "wrong", scores, preview)
    return scores


def report(scores: Scores) -> str:
    low, where = scores.lowest_right()
    lines = [
        f"threshold {MIN_THUMBNAIL_CORRELATION}",
        f"lowest right score  {low:.4f}  ({where})",
    ]
    cases = sorted({name for cases in scores.wrong.values() for name in cases})
    for case in cases:
        high, at = scores.highest_wrong(case)
        lines.append(f"highest wrong {case:<20} {high:.4f}  ({at})")
    high, at = scores.highest_wrong()
    lines.append(f"highest wrong overall {high:.4f}  ({at})")
    lines.append(
        f"margins: right - threshold {low - MIN_THUMBNAIL_CORRELATION:+.4f}, "
        f"threshold - wrong {MIN_THUMBNAIL_CORRELATION - high:+.4f}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, help="write every score here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-thumbnail-") as tmp:
        scores = measure(Path(tmp))
    print(report(scores))
    if args.json:
        args.json.write_text(json.dumps({"right": scores.right, "wrong": scores.wrong}, indent=1))


if __name__ == "__main__":
    main()
