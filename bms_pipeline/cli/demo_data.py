"""`bms-pipeline demo-data`: the synthetic BMDeep-shaped dataset (`core.synthetic.demo`)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bms_pipeline.cli.config import config_or_exit, with_root


def add_parser(sub: Any) -> None:
    demo = with_root(sub.add_parser("demo-data", help="write the synthetic BMDeep-shaped dataset"))
    demo.add_argument("--slides", type=int, default=4, help="number of slides (default 4)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--size",
        choices=["small", "large", "wide", "full"],
        default="small",
        help="small (2,500 px), large (30,000 px square), wide (190,528 x 14,376 px, the real "
        "width) or full (190,528 x 448,768 px, the largest real slides, from a bank of camera "
        "images; with --width/--height any size so written; use --slides 1)",
    )
    demo.add_argument(
        "--width", type=int, help="large-style slides at least this wide (px; with --height)"
    )
    demo.add_argument(
        "--height", type=int, help="large-style slides at least this high (px; with --width)"
    )
    demo.add_argument("--force", action="store_true", help="replace an existing raw/ folder")
    demo.set_defaults(func=cmd_demo_data)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from bms_pipeline.core.synthetic.banked import NotEnoughDiskError
    from bms_pipeline.core.synthetic.demo import write_demo_dataset

    root = config_or_exit(args).data_root
    started = time.perf_counter()
    if (args.width is None) != (args.height is None):
        print("error: give both --width and --height", file=sys.stderr)
        return 2
    dimensions = (args.width, args.height) if args.width is not None else None
    try:
        dataset = write_demo_dataset(
            root,
            slides=args.slides,
            seed=args.seed,
            size=args.size,
            force=args.force,
            dimensions=dimensions,
        )
    except (FileExistsError, ValueError, NotEnoughDiskError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {len(dataset.slides)} {args.size} slides for {len(dataset.patients)} patients "
        f"to {dataset.layout.raw} in {time.perf_counter() - started:.1f} s"
    )
    for slide_id, truth in dataset.slides.items():
        w, h = truth.spec.geometry.bounds[2:]
        print(f"  {slide_id}  {w} x {h} px")
    return 0
