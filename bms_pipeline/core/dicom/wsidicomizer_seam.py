"""The one place the project reaches past wsidicomizer's and OpenSlide's public interfaces.

`core.dicom.fast_source` makes a conversion 2.6 times faster (docs/benchmarks.md, variants A
and G) by reading OpenSlide's premultiplied BGRA buffer itself and encoding opaque tiles
straight from it, and by reading MIRAX camera images directly. Neither library offers a
public hook for that (docs/upstream.md proposes one), so this module wraps every private
name the speed-up needs behind a small public surface:

* `read_premultiplied_bgra` and `unpremultiply_to_rgba`: OpenSlide's raw buffer
  (`openslide.lowlevel._read_region` on `OpenSlide._osr`) and its own ARGB-to-RGBA
  conversion (`openslide._convert.argb2rgba`), which wsidicomizer's OpenSlide source uses
  too. The public `OpenSlide.read_region` returns a Pillow image already un-premultiplied,
  from which neither wsidicomizer's blank-tile verdict (made on the premultiplied bytes) nor
  the BGRA encode can be had without two more copies per tile.
* `OpenSlideLevel`: wsidicomizer's OpenSlide level (`OpenSlideLevelImageData`) with the
  geometry it keeps privately (`_level_index`, `_downsample`, `_offset`) as public names,
  and its compositing hook (`_composite_over_background`) as the public `composite`; its
  `encoder` and `transcoder` typed (wsidicom annotates them with a bare generic `Encoder`).
* `OpenSlideSourceSeam`: wsidicomizer's OpenSlide source (`OpenSlideSource`) with its
  OpenSlide handle, tile size, background colour, converted region and encoder (`_slide`,
  `_tile_size`, `_blank_color`, `_base_level_offset`, `_base_level_size`, `_encoder`) as
  public names, and its construction hooks (`_create_level_image_data`,
  `_create_overview_image_data`, `_create_thumbnail_image_data`, the abstract methods of
  wsidicomizer's `DicomizerSource`, whose subclasses `WsiDicomizer.convert` accepts as
  `preferred_source`) as public methods to override.

* `ReleasableOpenSlide`: an OpenSlide whose C handle (and the whole tile map OpenSlide keeps
  with it: 124 MiB for a full-height BMDeep slide) can be let go and reopened, built around
  the handle wsidicomizer opened (openslide-python's `_filename`, `_osr`, `_profile`; its
  methods all go through `_osr`, here a property), with wsidicomizer's `_associated_images`
  replaced by a map that reads through whatever handle is open; `holding_open` keeps it
  open during a read.

`library_problems()` lists what of this the installed libraries no longer have;
bms_pipeline_tests/core/test_wsidicomizer_seam.py fails naming it, and checks on a small
slide that the wrapped names still behave as this module assumes.
"""

from __future__ import annotations

import ctypes
import inspect
import threading
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from openslide import OpenSlide, OpenSlideCache
from wsidicom.codec import Encoder, Settings  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.geometry import Region  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.extras.openslide.openslide_image_data import (  # pyright: ignore[reportMissingTypeStubs]
    OpenSlideLevelImageData,
)
from wsidicomizer.extras.openslide.openslide_source import (  # pyright: ignore[reportMissingTypeStubs]
    OpenSlideSource,
)
from wsidicomizer.image_data import BaseDicomizerImageData  # pyright: ignore[reportMissingTypeStubs]

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "OpenSlideLevel",
    "OpenSlideSourceSeam",
    "ReleasableOpenSlide",
    "holding_open",
    "library_problems",
    "read_premultiplied_bgra",
    "unpremultiply_to_rgba",
]


def _openslide_private() -> tuple[Any, Any]:
    """openslide-python's `_read_region` (the C call that fills a caller's buffer) and
    `argb2rgba` (its C un-premultiply), imported where the project needs them."""
    from openslide._convert import argb2rgba
    from openslide.lowlevel import _read_region  # pyright: ignore[reportPrivateUsage]

    return _read_region, argb2rgba


_READ_REGION, _ARGB2RGBA = _openslide_private()


def read_premultiplied_bgra(
    slide: OpenSlide, level: int, x: int, y: int, width: int, height: int
) -> np.ndarray:
    """The (height, width, 4) buffer `openslide_read_region` fills for the region: premultiplied
    ARGB words, i.e. BGRA bytes on a little-endian machine; (x, y) in level-0 pixels."""
    buffer = np.empty((height, width, 4), dtype=np.uint8)
    with holding_open(slide) as handle:
        _READ_REGION(
            handle,
            buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
            x,
            y,
            level,
            width,
            height,
        )
    return buffer


@contextmanager
def holding_open(slide: OpenSlide) -> Generator[Any]:
    """`slide`'s C handle, which a `ReleasableOpenSlide` keeps open until the block ends."""
    if isinstance(slide, ReleasableOpenSlide):
        with slide.reading() as handle:
            yield handle
    else:
        yield slide._osr  # pyright: ignore[reportPrivateUsage]


def unpremultiply_to_rgba(bgra: np.ndarray) -> np.ndarray:
    """In place: OpenSlide's premultiplied BGRA into the straight RGBA that wsidicomizer
    composites (OpenSlide's own conversion, as wsidicomizer calls it); returns `bgra`."""
    _ARGB2RGBA(bgra.view(ctypes.c_uint32))
    return bgra


class ReleasableOpenSlide(OpenSlide):
    """An OpenSlide handle whose C handle can be released while nobody reads through it and
    is opened again, with its cache, on the next read.

    OpenSlide keeps its whole tile map in memory while a slide is open: 105 MiB for a
    full-height BMDeep slide (585,219 camera images), which grows with the slide's height.
    When the direct MIRAX reader serves every level, wsidicomizer's handle is only needed
    for metadata and the THUMBNAIL, all read before the first tile, so the conversion
    releases it for the hours of writing (`FastOpenSlideSource`). A read that must go
    through OpenSlide after all (a read the direct reader refuses) opens it again.

    Built with `adopt` from the handle wsidicomizer opened (openslide-python's private
    `_filename`, `_osr` and `_profile`): every OpenSlide method goes through `_osr`, here a
    property that reopens on demand.
    """

    _handle: Any = None
    _cache: OpenSlideCache | None = None
    _lock: threading.RLock
    _users: int
    _closed: bool
    _filename: Any
    _profile: Any
    opens: int
    """How many times the C handle was opened (1: never reopened)."""
    releases: int

    @classmethod
    def adopt(cls, slide: OpenSlide) -> ReleasableOpenSlide:
        """This class around `slide`'s open C handle (`slide` must not be used afterwards)."""
        adopted = cls.__new__(cls)
        adopted._lock = threading.RLock()
        adopted._users = 0
        adopted.opens = 1
        adopted.releases = 0
        adopted._closed = False
        adopted._filename = slide._filename
        adopted._profile = getattr(slide, "_profile", None)
        adopted._handle = slide._osr
        return adopted

    @property
    def _osr(self) -> Any:
        with self._lock:
            if self._handle is None:
                if self._closed:
                    raise ValueError(f"{self._filename}: the slide is closed")
                self._handle = _openslide_lowlevel().open(self._filename)
                self.opens += 1
                if self._cache is not None:
                    OpenSlide.set_cache(self, self._cache)
            return self._handle

    @_osr.setter
    def _osr(self, handle: Any) -> None:
        self._handle = handle

    @property
    def is_open(self) -> bool:
        """Whether the C handle (and OpenSlide's tile map) is held now."""
        return self._handle is not None

    def set_cache(self, cache: OpenSlideCache) -> None:
        self._cache = cache
        super().set_cache(cache)

    @property
    def associated_images(self) -> Mapping[str, Image]:
        """The associated images, read through whatever handle is open when asked (a map
        bound to one C handle would fail once it is released)."""
        return _ReopeningImages(self)

    @contextmanager
    def reading(self) -> Generator[Any]:
        """The open C handle, kept open (`release` waits its turn) until the block ends."""
        with self._lock:
            self._users += 1
            handle = self._osr
        try:
            yield handle
        finally:
            with self._lock:
                self._users -= 1

    def release(self) -> bool:
        """Close the C handle if nobody is reading through it; False if it was kept."""
        with self._lock:
            if self._handle is None or self._users:
                return False
            _openslide_lowlevel().close(self._handle)
            self._handle = None
            self.releases += 1
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._handle is not None:
                _openslide_lowlevel().close(self._handle)
                self._handle = None


class _ReopeningImages(Mapping[str, "Image"]):
    """OpenSlide's associated images, each read through the slide's current handle."""

    def __init__(self, slide: ReleasableOpenSlide) -> None:
        self._slide = slide

    def _map(self) -> Mapping[str, Image]:
        return OpenSlide.associated_images.fget(self._slide)  # pyright: ignore[reportOptionalCall]

    def __getitem__(self, key: str) -> Image:
        return self._map()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._map()))

    def __len__(self) -> int:
        return len(self._map())


def _openslide_lowlevel() -> Any:
    from openslide import lowlevel

    return lowlevel


class OpenSlideLevel(OpenSlideLevelImageData):
    """A pyramid level of `OpenSlideSourceSeam`: wsidicomizer's OpenSlide level with its
    geometry as public names and its compositing as the overridable `composite`."""

    def __init__(self, source: OpenSlideSourceSeam, level_index: int) -> None:
        # wsidicomizer annotates `encoder` as a bare generic `Encoder`.
        super().__init__(  # pyright: ignore[reportUnknownMemberType]
            source.slide,
            source._blank_color,  # pyright: ignore[reportPrivateUsage]
            source._base_level_offset,  # pyright: ignore[reportPrivateUsage]
            source._base_level_size,  # pyright: ignore[reportPrivateUsage]
            source.metadata.pyramid.image,
            level_index,
            source.requested_tile_size,
            source.encoder,
        )
        self._seam_slide = source.slide

    @property
    def _osr(self) -> Any:
        """wsidicomizer's reads of this level take the handle from the slide each time: a
        `ReleasableOpenSlide` may have released and reopened it since the level was made."""
        return self._seam_slide._osr  # pyright: ignore[reportPrivateUsage]

    @_osr.setter
    def _osr(self, handle: Any) -> None:
        pass  # wsidicomizer's __init__ keeps the handle it was given; ours is the slide's

    @property
    def level_index(self) -> int:
        """OpenSlide's index of this level."""
        return self._level_index

    @property
    def encoder(self) -> Encoder[Settings]:
        """wsidicom's encoder of this level's tiles, typed: wsidicom annotates it as a bare
        generic `Encoder`, whose settings type strict checking sees as Unknown."""
        return super().encoder  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

    @property
    def transcoder(self) -> Encoder[Settings] | None:
        """wsidicomizer's transcoder (the encoder), typed as `encoder` is."""
        return super().transcoder  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

    @property
    def slide(self) -> OpenSlide:
        return self._seam_slide

    def base_location(self, region: Region) -> tuple[int, int]:
        """Where `region` (in this level's pixels of the converted region) starts in
        OpenSlide's level-0 pixels: wsidicomizer's own placement of its reads."""
        location = region.start * self._downsample + self._offset
        return int(location.x), int(location.y)

    def read_openslide_bgra(self, region: Region) -> np.ndarray:
        """OpenSlide's premultiplied BGRA of `region`, read as wsidicomizer reads it."""
        x, y = self.base_location(region)
        return read_premultiplied_bgra(
            self._seam_slide, self.level_index, x, y, region.size.width, region.size.height
        )

    def composite(self, rgba: np.ndarray) -> np.ndarray:
        """RGB of straight `rgba` over the background; wsidicomizer's by default, used by
        every read it makes for this level."""
        return super()._composite_over_background(rgba)

    def _composite_over_background(self, rgba: np.ndarray) -> np.ndarray:
        return self.composite(rgba)


class OpenSlideSourceSeam(OpenSlideSource):
    """wsidicomizer's OpenSlide source with the state its subclasses need as public names
    and its construction hooks as public methods (`level_image_data`,
    `overview_image_data`, `thumbnail_image_data`), each wsidicomizer's by default."""

    _releasable: ReleasableOpenSlide | None = None

    @property
    def slide(self) -> OpenSlide:
        """The source's own OpenSlide handle (its cache and reads are the conversion's)."""
        return self._slide

    def make_slide_releasable(self) -> ReleasableOpenSlide:
        """Turn the source's OpenSlide handle into a `ReleasableOpenSlide` (before any level
        is made), its associated images included."""
        if self._releasable is None:
            self._releasable = ReleasableOpenSlide.adopt(self._slide)
            self._slide = self._releasable
            self._associated_images = self._releasable.associated_images
        return self._releasable

    @property
    def requested_tile_size(self) -> int | None:
        """The tile size the conversion asked for (None: wsidicomizer's default)."""
        return self._tile_size

    @property
    def background(self) -> int | tuple[int, int, int] | None:
        """The slide's background colour as wsidicomizer reads it (None: unset)."""
        return self._blank_color

    @property
    def converted_region(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) in level-0 pixels of what the pyramid covers: the slide's
        bounds, else the whole level 0."""
        offset, size = self._base_level_offset, self._base_level_size
        x, y = (int(offset.x), int(offset.y)) if offset is not None else (0, 0)
        width, height = (
            (int(size.width), int(size.height)) if size is not None else self._slide.dimensions
        )
        return x, y, width, height

    @property
    def encoder(self) -> Encoder[Settings]:
        """The conversion's encoder (wsidicomizer annotates it as a bare generic `Encoder`)."""
        return self._encoder  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

    def macro_image(self) -> Image | None:
        """The slide preview (OpenSlide's `macro` associated image), if any."""
        return self._slide.associated_images.get("macro")

    def level_image_data(self, level_index: int) -> BaseDicomizerImageData:
        return OpenSlideLevel(self, level_index)

    def overview_image_data(self) -> BaseDicomizerImageData | None:
        return super()._create_overview_image_data()

    def thumbnail_image_data(self) -> BaseDicomizerImageData | None:
        return super()._create_thumbnail_image_data()

    def _create_level_image_data(self, level_index: int) -> BaseDicomizerImageData:
        return self.level_image_data(level_index)

    def _create_overview_image_data(self) -> BaseDicomizerImageData | None:
        return self.overview_image_data()

    def _create_thumbnail_image_data(self) -> BaseDicomizerImageData | None:
        return self.thumbnail_image_data()


_LEVEL_INIT = (
    "open_slide",
    "blank_color",
    "offset",
    "size",
    "image_metadata",
    "level_index",
    "tile_size",
    "encoder",
)
_SOURCE_HOOKS = (
    "_create_level_image_data",
    "_create_overview_image_data",
    "_create_thumbnail_image_data",
)
_SOURCE_STATE = (
    "_slide",
    "_associated_images",
    "_tile_size",
    "_blank_color",
    "_base_level_offset",
    "_base_level_size",
    "_encoder",
)
_LEVEL_STATE = ("_level_index", "_downsample", "_offset")


def library_problems(
    source: OpenSlideSource | None = None, level: OpenSlideLevelImageData | None = None
) -> list[str]:
    """What this module relies on that the installed wsidicomizer and openslide-python lack,
    one sentence each (empty: all there). `source` and `level`, opened on a slide, also have
    their instance state checked."""
    problems: list[str] = []
    try:
        read_region, argb2rgba = _openslide_private()
    except ImportError as exc:
        return [f"openslide-python lacks a private function this module uses: {exc}"]
    argtypes = getattr(read_region, "argtypes", None)  # a ctypes function of libopenslide
    if argtypes is None or len(argtypes) != 7:
        problems.append(
            "openslide.lowlevel._read_region no longer takes (osr, buf, x, y, level, w, h): "
            f"its ctypes argtypes are {argtypes}"
        )
    if not callable(argb2rgba):
        problems.append("openslide._convert.argb2rgba is no longer a function")
    # wsidicomizer annotates the `encoder` parameter as a bare generic `Encoder`.
    init = list(inspect.signature(OpenSlideLevelImageData.__init__).parameters)[1:]  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    if tuple(init) != _LEVEL_INIT:
        problems.append(
            f"wsidicomizer's OpenSlideLevelImageData.__init__ takes {init}, not {list(_LEVEL_INIT)}"
        )
    for hook in (*_SOURCE_HOOKS, "_composite_over_background"):
        owner = OpenSlideLevelImageData if hook == "_composite_over_background" else OpenSlideSource
        if not callable(getattr(owner, hook, None)):
            problems.append(f"wsidicomizer's {owner.__name__} has no method {hook}")
    if source is not None:
        problems += [
            f"wsidicomizer's OpenSlideSource no longer sets {name}"
            for name in _SOURCE_STATE
            if not hasattr(source, name)
        ]
        slide = getattr(source, "_slide", None)
        for name in ("_osr", "_filename"):
            if not hasattr(slide, name):
                problems.append(f"openslide-python's OpenSlide no longer sets {name}")
    if level is not None:
        problems += [
            f"wsidicomizer's OpenSlideLevelImageData no longer sets {name}"
            for name in _LEVEL_STATE
            if not hasattr(level, name)
        ]
    return problems
