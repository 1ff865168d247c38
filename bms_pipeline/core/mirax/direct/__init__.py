"""Read MIRAX level pixels straight from the stored camera images, byte for byte as OpenSlide.

OpenSlide's `read_region` on a MIRAX slide decodes each stored image, wraps it in a cairo
surface and composites it with the SATURATE operator. Where every image lands on a whole
pixel that composite is a plain paste, so this module does it with numpy instead: it
rebuilds OpenSlide 4's tile map (`openslide-vendor-mirax.c`, the tilemap grid of
`openslide-grid.c`) from Slidedat.ini and Index.dat, decodes with the same libjpeg-turbo
settings (`openslide-decode-jpeg.c`: default ISLOW DCT and fancy upsampling, output
JCS_EXT_BGRA) and pastes in OpenSlide's painting order. The speed comes from a decoded-image
cache sized for raster-order reads (OpenSlide's default 32 MiB cache re-decodes images
shared by consecutive tile rows), from reusing evicted image buffers, and from decoding in
parallel without the cairo work. Anything it cannot reproduce exactly raises
`MiraxDirectUnsupported`, so the caller can fall back to OpenSlide.

OpenSlide semantics reproduced here (OpenSlide 4.0):

* placement: level-0 image (x, y) of camera field (xp, yp) = (x // d, y // d) sits at the
  field position plus (x % d) * DIGITIZER_WIDTH; field positions come from
  VIMSLIDE_POSITION_BUFFER, else StitchingIntensityLayer (zlib), else the nominal grid
  spaced by field size minus OVERLAP_X/Y; a position of (0, 0) for a field other than
  (0, 0) means "not scanned" (`get_tile_position`).
* each stored image is a tile of a tile map keyed by (col, row) with a fractional offset
  from `col * advance`; advance = tile size - overlap / images-per-position.
* painting: tiles are visited from the bottom-right to the top-left of the requested tile
  range (widened by the "extra tiles" the offsets need) and composited with SATURATE onto
  a cleared surface, so where images overlap the one with the larger (row, col) wins.
  Painting forwards with overwrite gives the same pixels.
* `openslide_read_region` splits a read into 4096 x 4096 pieces and shifts negative
  origins by `(int64)(-x / downsample)` level pixels; both are emulated.
* pixels are opaque premultiplied ARGB (BGRA bytes on little-endian) or 0 where no image
  paints.

Modules: `tile_map` (where every stored image lands), `decoding`, `cache`, `reader`.
"""

from __future__ import annotations

from bms_pipeline.core.mirax.direct.cache import CacheStats
from bms_pipeline.core.mirax.direct.decoding import decode_image_bgra
from bms_pipeline.core.mirax.direct.errors import MiraxDirectError, MiraxDirectUnsupported
from bms_pipeline.core.mirax.direct.reader import MiraxDirectReader

__all__ = [
    "CacheStats",
    "MiraxDirectError",
    "MiraxDirectReader",
    "MiraxDirectUnsupported",
    "decode_image_bgra",
]
