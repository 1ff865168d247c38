"""Why the direct reader stops: a slide it cannot reproduce exactly (fall back to OpenSlide), or a broken one."""

from __future__ import annotations


class MiraxDirectUnsupported(Exception):
    """The slide, level or read cannot be reproduced exactly; fall back to OpenSlide."""


class MiraxDirectError(Exception):
    """The slide's data cannot be read (a truncated data file, an undecodable image).

    Not a reason to fall back: OpenSlide fails on the same image, only less clearly.
    """
