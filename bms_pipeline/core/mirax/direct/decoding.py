"""Decoding a stored image to BGRA as OpenSlide does (libjpeg-turbo ISLOW, fancy upsampling; PNG)."""

from __future__ import annotations

import struct

import numpy as np
from imagecodecs import JPEG8, jpeg8_decode, png_decode

from bms_pipeline.core.mirax.direct.errors import MiraxDirectError, MiraxDirectUnsupported

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header(blob: bytes, where: str) -> tuple[int, int]:
    """(bit depth, colour type) of a PNG, refusing what OpenSlide would turn into alpha.

    OpenSlide expands palettes and tRNS to alpha and then rejects anything but RGB, and
    scales 16-bit samples; only 8-bit RGB and grey without tRNS are a plain decode.
    """
    if not blob.startswith(_PNG_SIGNATURE) or blob[12:16] != b"IHDR":
        raise MiraxDirectError(f"{where}: not a PNG image")
    depth, colour_type = blob[24], blob[25]
    at = 8
    while at + 8 <= len(blob):
        (length,) = struct.unpack_from(">I", blob, at)
        kind = blob[at + 4 : at + 8]
        if kind == b"tRNS":
            raise MiraxDirectUnsupported(f"{where}: PNG with a tRNS chunk (OpenSlide reads alpha)")
        if kind == b"IDAT":
            break
        at += 12 + length
    if depth != 8 or colour_type not in (0, 2):
        raise MiraxDirectUnsupported(
            f"{where}: PNG with bit depth {depth} and colour type {colour_type} "
            "(only 8-bit RGB or grey is a plain decode)"
        )
    return depth, colour_type


def decode_image_bgra(
    blob: bytes, image_format: str, where: str = "image", out: np.ndarray | None = None
) -> np.ndarray:
    """Decode a stored image to (h, w, 4) BGRA with alpha 255, as OpenSlide decodes it.

    JPEG: libjpeg-turbo with its defaults (ISLOW DCT, fancy upsampling) straight to
    JCS_EXT_BGRA, the call OpenSlide makes on little-endian machines. `out`, if its shape
    fits, receives the pixels (reusing a buffer is cheaper than faulting in a new one).
    """
    try:
        if image_format == "JPEG":
            if not blob.startswith(b"\xff\xd8"):
                raise MiraxDirectError(f"{where}: not a JPEG image (no SOI marker)")
            if not blob.endswith(b"\xff\xd9"):
                # OpenSlide reads past the index length until libjpeg stops; only an
                # exactly delimited stream is known to decode the same.
                raise MiraxDirectUnsupported(f"{where}: JPEG record does not end with EOI")
            try:
                pixels = jpeg8_decode(blob, outcolorspace=JPEG8.CS.EXT_BGRA, out=out)
            except Exception:
                if out is None:
                    raise
                # most likely a size other than `out`'s: decode again to report it
                pixels = jpeg8_decode(blob, outcolorspace=JPEG8.CS.EXT_BGRA)
            if pixels.ndim != 3 or pixels.shape[2] != 4:
                raise MiraxDirectUnsupported(f"{where}: JPEG decodes to shape {pixels.shape}")
            return pixels
        if image_format == "PNG":
            _, colour_type = _png_header(blob, where)
            decoded = png_decode(blob)
            height, width = decoded.shape[:2]
            fits = out is not None and out.shape == (height, width, 4) and out.dtype == np.uint8
            bgra = out if fits and out is not None else np.empty((height, width, 4), np.uint8)
            if colour_type == 0:
                grey = decoded if decoded.ndim == 2 else decoded[..., 0]
                bgra[..., 0] = grey
                bgra[..., 1] = grey
                bgra[..., 2] = grey
            else:
                bgra[..., 0] = decoded[..., 2]
                bgra[..., 1] = decoded[..., 1]
                bgra[..., 2] = decoded[..., 0]
            bgra[..., 3] = 255
            return bgra
    except (MiraxDirectError, MiraxDirectUnsupported):
        raise
    except Exception as exc:  # any decoder failure becomes an error naming the image
        raise MiraxDirectError(f"{where}: cannot decode {image_format} ({exc})") from exc
    raise MiraxDirectUnsupported(f"{where}: image format {image_format}")
