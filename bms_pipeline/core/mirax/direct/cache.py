"""The decoded-image cache: sized for raster-order reads, evicted buffers reused, decodes shared by threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    budget: int


class CacheEntry:
    """A decoded image; `pins` counts readers pasting from it, so that its buffer is only
    reused for another decode once nobody reads it. `carry`: the last read that used it
    ended above its bottom edge, so the next tile row will read it again."""

    __slots__ = ("array", "cached", "carry", "pins")

    def __init__(self, array: np.ndarray, pins: int, carry: bool = False) -> None:
        self.array = array
        self.pins = pins
        self.cached = False
        self.carry = carry


class _Pending:
    """A decode in progress; other threads wanting the same image wait on it."""

    __slots__ = ("done", "entry", "error", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: CacheEntry | None = None
        self.error: BaseException | None = None
        self.waiters = 0


class ImageCache:
    """Decoded images with a byte budget, evicted in the order raster reads need them.

    Reads go tile row by tile row. An image whose bottom edge lies below the read that used
    it (a *carry*) is needed again by the next tile row; the others only, at most, by the
    next tile to the right. So the cache evicts the least recently used of the others
    first, and only then carries, the most recently used first: a budget smaller than a
    row of carries keeps the left part of the row (which the next tile row reads first)
    instead of evicting each carry before it is read again, as plain LRU would. The budget
    then bounds memory whatever the slide's width, at the cost of decoding again only the
    carries that did not fit.

    The lock only guards the bookkeeping: decoding runs outside it (imagecodecs releases
    the GIL), and a second thread asking for an image being decoded waits for that decode
    instead of repeating it. Evicted buffers that nobody reads any more are handed to the
    next decode as its output: writing into fresh memory costs page faults that are a
    third of a JPEG decode here.
    """

    def __init__(self, budget: int, spares_per_shape: int = 8) -> None:
        self._budget = max(0, int(budget))
        self._spares_per_shape = spares_per_shape
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, int], CacheEntry] = OrderedDict()  # not carries
        self._carries: OrderedDict[tuple[int, int], CacheEntry] = OrderedDict()
        self._group: object = None
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._spares: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0

    def acquire(
        self,
        key: tuple[int, int],
        shape: tuple[int, ...],
        load: Callable[[np.ndarray | None], np.ndarray],
        wait: bool = True,
        carry: bool = False,
        group: object = None,
    ) -> CacheEntry | None:
        """The pinned entry for `key`, decoding it with `load(spare_or_None)` if needed;
        pair every entry returned with `release`. With `wait=False`, None instead of
        waiting for another thread's decode, so the caller can decode something else
        first. `carry`: the next tile row needs the image too. A new `group` (the level
        being read) makes every carry of the previous one an ordinary entry."""
        spare = None
        with self._lock:
            if group != self._group:
                self._group = group
                for old_key, old in self._carries.items():
                    old.carry = False
                    self._entries[old_key] = old
                self._carries.clear()
            entry = self._entries.get(key) or self._carries.get(key)
            if entry is not None:
                self._place(key, entry, carry)
                entry.pins += 1
                self._hits += 1
                return entry
            pending = self._pending.get(key)
            if pending is not None and not wait:
                return None
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
                self._misses += 1
                spares = self._spares.get(shape)
                spare = spares.pop() if spares else None
            else:
                pending.waiters += 1
                self._hits += 1
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            assert pending.entry is not None
            return pending.entry
        try:
            if spare is not None:
                spare.flags.writeable = True
            array = load(spare)
        except BaseException as exc:
            pending.error = exc
            with self._lock:
                del self._pending[key]
            pending.done.set()
            raise
        array.flags.writeable = False
        with self._lock:
            del self._pending[key]
            entry = CacheEntry(array, pins=1 + pending.waiters)
            if array.nbytes <= self._budget:
                entry.cached = True
                self._place(key, entry, carry)
                self._bytes += array.nbytes
                while self._bytes > self._budget:
                    if self._entries:
                        _, old = self._entries.popitem(last=False)
                    else:
                        _, old = self._carries.popitem(last=True)
                    old.cached = False
                    self._bytes -= old.array.nbytes
                    if old.pins == 0:
                        self._recycle(old.array)
        pending.entry = entry
        pending.done.set()
        return entry

    def _place(self, key: tuple[int, int], entry: CacheEntry, carry: bool) -> None:
        """Make `entry` the most recently used of its class (lock held)."""
        if entry.cached:
            (self._carries if entry.carry else self._entries).pop(key, None)
        entry.carry = carry
        (self._carries if carry else self._entries)[key] = entry

    def release(self, entry: CacheEntry) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.pins == 0 and not entry.cached:
                self._recycle(entry.array)

    def _recycle(self, array: np.ndarray) -> None:
        spares = self._spares.setdefault(array.shape, [])
        if len(spares) < self._spares_per_shape:
            spares.append(array)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                len(self._entries) + len(self._carries),
                self._bytes,
                self._budget,
            )

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._carries.clear()
            self._spares.clear()
            self._bytes = 0
