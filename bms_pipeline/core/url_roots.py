"""Data and output roots addressed by URL (fsspec): a local folder, or object storage.

OpenSlide, dicom3tools and DuckDB need local files, so every root has a local side. A
local root (a plain path or ``file://``) is its own local side and nothing is copied. A
remote root (``s3://``, ``gs://``, ``memory://``, ...) is mirrored into a scratch folder:
steps ``fetch`` what they read (only files whose remote size or version changed since the
last fetch, and local copies of files the remote no longer has are dropped) and ``publish`` what
they wrote, so a step can run on any machine that reaches the root.

Publishing uploads a whole series or table beside its target (``<target>.partial-<token>``)
and only then replaces the target, so a failed upload leaves the previous version in
place; a stale partial is removed by the next publish of the same target. Object stores
have no atomic rename of a prefix: the complete upload is copied over the target object by
object (server-side), then what the new version lacks is removed, so a reader sees each
object whole, old or new, and during the copy a series can be part old, part new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol, cast, overload

import fsspec  # pyright: ignore[reportMissingTypeStubs]
from fsspec.core import url_to_fs  # pyright: ignore[reportMissingTypeStubs, reportUnknownVariableType]
from fsspec.implementations.local import LocalFileSystem  # pyright: ignore[reportMissingTypeStubs]

SCRATCH_ENV = "BMS_SCRATCH"
MANIFEST = ".bms-fetched.json"
_VERSION_KEYS = (
    "ETag",
    "etag",
    "md5Hash",
    "generation",
    "VersionId",
    "mtime",
    "LastModified",
    "created",
)
_PARTIAL = re.compile(r"\.partial-[0-9a-f]{12}(/|$)")
"""A path inside an upload in progress (`publish`): a reader listing the folder beside it
(dcentvfy fetching a patient's study while another slide of the patient is published)
must not take it for published objects, or it sees every instance twice."""
_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class StorageError(RuntimeError):
    """A fetch or publish failed; the message names the URL."""


class _FileSystem(Protocol):
    """The `fsspec.AbstractFileSystem` methods this module calls, with the types fsspec
    documents for them (its code carries no annotations, so strict checking sees Unknown)."""

    def invalidate_cache(self, path: str | None = None) -> None: ...
    def isfile(self, path: str) -> bool: ...
    def isdir(self, path: str) -> bool: ...
    def exists(self, path: str) -> bool: ...
    def info(self, path: str) -> dict[str, Any]: ...
    @overload
    def find(
        self, path: str, *, withdirs: bool = ..., detail: Literal[False] = ...
    ) -> list[str]: ...
    @overload
    def find(
        self, path: str, *, withdirs: bool = ..., detail: Literal[True]
    ) -> dict[str, dict[str, Any]]: ...
    def glob(self, path: str) -> list[str]: ...
    def rm(self, path: str | list[str], recursive: bool = False) -> None: ...
    def copy(self, path1: str, path2: str) -> None: ...
    def get_file(self, rpath: str, lpath: str) -> None: ...
    def put_file(self, lpath: str, rpath: str) -> None: ...


def default_scratch() -> Path:
    return Path(
        os.environ.get(SCRATCH_ENV) or Path(os.environ.get("TMPDIR", "/tmp"))  # noqa: S108 (a folder of its own below) / "bms-pipeline"
    )


def _fingerprint(info: dict[str, Any]) -> str:
    """Size plus the store's version marker (ETag, generation, mtime...), whichever it has."""
    version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) not in (None, "")), "")
    return f"{info.get('size')}:{version}"


def listing_signature(entries: dict[str, dict[str, Any]]) -> str:
    """A cheap change detector over listed files: names, sizes and store versions."""
    parts = [f"{name}:{_fingerprint(info)}" for name, info in sorted(entries.items())]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@contextmanager
def _mirror_lock(root: Path) -> Generator[None]:
    """One fetch or publish at a time per mirror, across threads and processes."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(root, threading.Lock())
    with lock, open(root / ".bms-mirror.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


S3_PARTS_IN_FLIGHT = 2
"""Parts of one multipart upload that s3fs sends at once. Its default, 10 parts of 50 MiB or
more, each held in memory with its copies, took a 600 MB upload to 1,071 MiB of peak RSS
against 269 MiB with 2 and 168 MiB with 1 (moto's server, measured); a level-0 file of a
real slide is 13 GB, and a job's peak must stay near a local root's."""


def storage_options(url: str) -> dict[str, Any]:
    """The fsspec options this project sets for `url` (upload memory; see S3_PARTS_IN_FLIGHT)."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol in ("s3", "s3a"):
        return {"max_concurrency": S3_PARTS_IN_FLIGHT}
    return {}


@dataclass(frozen=True)
class StorageRoot:
    """A root URL and its local side (`local_root`), which the rest of the code reads and writes."""

    url: str
    scratch: Path = field(default_factory=default_scratch)

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("a storage root URL must not be empty")

    @classmethod
    def of(
        cls, url: str | os.PathLike[str], scratch: str | os.PathLike[str] | None = None
    ) -> StorageRoot:
        return cls(os.fspath(url), Path(scratch) if scratch is not None else default_scratch())

    @cached_property
    def _fs_and_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        # fsspec documents `url_to_fs` as returning (filesystem, urlpath).
        fs, path = cast(
            "tuple[fsspec.AbstractFileSystem, str]",
            url_to_fs(self.url, **storage_options(self.url)),
        )
        return fs, path.rstrip("/") or "/"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_and_path[0]

    @property
    def _files(self) -> _FileSystem:
        """`fs` seen through the methods this module calls, typed as fsspec documents them
        (`find` and `glob` return lists of paths, `find(detail=True)` a path -> info dict)."""
        return cast("_FileSystem", self._fs_and_path[0])

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def local_root(self) -> Path:
        """The root itself when local; otherwise this root's mirror under the scratch folder."""
        if self.is_local:
            return Path(self._fs_and_path[1]).resolve()
        digest = hashlib.sha256(self.url.rstrip("/").encode()).hexdigest()[:16]
        return (self.scratch / "mirror" / digest).resolve()

    def remote(self, rel: str | PurePosixPath) -> str:
        rel = str(PurePosixPath(rel))
        return self._fs_and_path[1] if rel in ("", ".") else f"{self._fs_and_path[1]}/{rel}"

    def url_of(self, rel: str | PurePosixPath) -> str:
        """For messages: the URL a user would look at."""
        return str(self.local_root / rel) if self.is_local else f"{self.url.rstrip('/')}/{rel}"

    # -- listing ---------------------------------------------------------------------------
    def listing(self, rel: str) -> dict[str, dict[str, Any]]:
        """Every file at or below `rel`, keyed by path relative to the root."""
        fs, base = self._files, self._fs_and_path[1]
        target = self.remote(rel)
        if not self.is_local:
            fs.invalidate_cache(target)  # another worker may have written since we last listed
        try:
            if fs.isfile(target):
                found = {target: fs.info(target)}
            elif fs.isdir(target):
                found = dict(fs.find(target, detail=True, withdirs=False))  # path -> info
            else:
                return {}
        except FileNotFoundError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for path, info in found.items():
            path = path if path.startswith("/") or not base.startswith("/") else "/" + path
            name = str(PurePosixPath(path).relative_to(base)) if base != "/" else path.lstrip("/")
            if _PARTIAL.search(name):
                continue  # another writer's upload in flight (or a dead one's): not published
            out[name] = info
        return out

    def signature(self, rels: list[str]) -> str:
        """`listing_signature` over the files at or below `rels`."""
        return listing_signature({n: i for rel in rels for n, i in self.listing(rel).items()})

    # -- mirror ----------------------------------------------------------------------------
    def _manifest(self) -> dict[str, str]:
        path = self.local_root / MANIFEST
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_manifest(self, manifest: dict[str, str]) -> None:
        path = self.local_root / MANIFEST
        tmp = path.with_name(f"{MANIFEST}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(manifest, sort_keys=True))
        os.replace(tmp, path)

    def fetch(self, rel: str, required: bool = False) -> Path:
        """The local path of `rel` (file or folder), brought up to date with the remote.

        Files unchanged since the last fetch are not downloaded again; local copies of
        remote files below `rel` that the remote no longer has are removed, so a replaced
        series never keeps stale instances (unpublished local output is left alone).
        `required` raises FileNotFoundError naming the URL when absent.
        """
        local = self.local_root / rel
        if self.is_local:
            if required and not local.exists():
                raise FileNotFoundError(f"{local}: not found")
            return local
        with _mirror_lock(self.local_root):
            remote = self.listing(rel)
            if required and not remote:
                raise FileNotFoundError(f"{self.url_of(rel)}: not found")
            manifest = self._manifest()
            fs = self._files
            for name, info in remote.items():
                target = self.local_root / name
                stamp = _fingerprint(info)
                if manifest.get(name) == stamp and target.is_file():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
                try:
                    fs.get_file(self.remote(name), str(tmp))
                    os.replace(tmp, target)
                except Exception as exc:
                    tmp.unlink(missing_ok=True)
                    raise StorageError(f"{self.url_of(name)}: download failed ({exc})") from exc
                manifest[name] = stamp
            self._drop_stale(rel, set(remote), manifest)
            self._save_manifest(manifest)
        return local

    def _drop_stale(self, rel: str, keep: set[str], manifest: dict[str, str]) -> None:
        """Remove local files below `rel` that came from the remote (fetched or published)
        and that the remote no longer has. Files the manifest does not know are another
        step's work in progress, written but not yet published: they stay."""
        local = self.local_root / rel
        if local.is_file():
            paths = [local]
        elif local.is_dir():
            paths = [p for p in local.rglob("*") if p.is_file()]
        else:
            paths = []
        for path in paths:
            name = path.relative_to(self.local_root).as_posix()
            if name in manifest and name not in keep:
                path.unlink()
        if local.is_dir():
            for folder in sorted((p for p in local.rglob("*") if p.is_dir()), reverse=True):
                if not any(folder.iterdir()):
                    folder.rmdir()
        for name in [
            n for n in manifest if (n == rel or n.startswith(f"{rel}/")) and n not in keep
        ]:
            manifest.pop(name)

    def withdraw(self, rel: str) -> bool:
        """Remove `rel` (file or folder) from the root and its local mirror: a slide refused
        by the publication gate must not stay published from an earlier run. True if
        anything was removed."""
        local = self.local_root / rel
        removed = False
        with _mirror_lock(self.local_root):
            if local.exists():
                retired = local.parent / f".withdrawn-{local.name}-{uuid.uuid4().hex[:8]}"
                local.rename(retired)  # one rename: readers see all of it or none
                if retired.is_dir():
                    shutil.rmtree(retired, ignore_errors=True)
                else:
                    retired.unlink()
                removed = True
            if not self.is_local:
                fs, target = self._files, self.remote(rel)
                try:
                    if fs.exists(target):
                        fs.rm(target, recursive=True)
                        removed = True
                except Exception as exc:  # fsspec backends raise their own types
                    raise StorageError(f"{self.url_of(rel)}: withdrawal failed ({exc})") from exc
                manifest = self._manifest()
                for name in [n for n in manifest if n == rel or n.startswith(f"{rel}/")]:
                    manifest.pop(name)
                self._save_manifest(manifest)
        return removed

    def _replace_from_partial(self, partial: str, target: str, uploaded: list[str]) -> None:
        """Move the complete upload at `partial` over `target`, object by object.

        A prefix "move" is no primitive of an object store (fsspec's recursive `mv` on s3fs
        copies pseudo-directories and fails with NoSuchKey), so each uploaded object is
        copied server-side to its final key, overwriting the old version in one PUT, and
        only then are the target's objects that the new version lacks removed, then the
        partial. A reader sees each object old or new, never half of one."""
        fs = self._files
        finals = [target + dest[len(partial) :] for dest in uploaded]
        fs.invalidate_cache(target)
        old: set[str] = set(fs.find(target)) if fs.exists(target) else set()
        if fs.isfile(target) and uploaded != [partial]:
            fs.rm(target)  # a file replaced by a folder
        for dest, final in zip(uploaded, finals, strict=True):
            fs.copy(dest, final)
        keep = {f.lstrip("/") for f in finals}
        stale = [path for path in old if path.lstrip("/") not in keep]
        if stale:
            fs.rm(stale)
        if fs.exists(partial):
            fs.rm(partial, recursive=True)
        fs.invalidate_cache(target)

    def publish(self, rel: str) -> None:
        """Upload the local `rel` (file or folder) to the remote, replacing what was there.

        The upload goes beside the target first and is moved over it only when complete.
        A missing local `rel` is an error, never a deletion: another process's fetch may
        have dropped an unpublished file, and that must not remove the published one.
        Nothing happens for a local root.
        """
        if self.is_local:
            return
        local = self.local_root / rel
        fs = self._files
        target = self.remote(rel)
        partial = f"{target}.partial-{uuid.uuid4().hex[:12]}"
        with _mirror_lock(self.local_root):
            if not local.exists():
                raise StorageError(f"{self.url_of(rel)}: nothing to publish at {local}")
            try:
                for stale in fs.glob(f"{target}.partial-*"):
                    fs.rm(stale, recursive=True)
                files = (
                    [(local, partial)]
                    if local.is_file()
                    else [
                        (p, f"{partial}/{p.relative_to(local).as_posix()}")
                        for p in sorted(local.rglob("*"))
                        if p.is_file()
                    ]
                )
                for source, dest in files:
                    fs.put_file(str(source), dest)
                self._replace_from_partial(partial, target, [dest for _, dest in files])
            except Exception as exc:  # fsspec backends raise their own types
                with contextlib.suppress(Exception):
                    if fs.exists(partial):
                        fs.rm(partial, recursive=True)
                raise StorageError(f"{self.url_of(rel)}: upload failed ({exc})") from exc
            manifest = self._manifest()
            remote = self.listing(rel)
            for name, info in remote.items():
                manifest[name] = _fingerprint(info)
            for name in [
                n for n in manifest if (n == rel or n.startswith(f"{rel}/")) and n not in remote
            ]:
                manifest.pop(name)
            self._save_manifest(manifest)
