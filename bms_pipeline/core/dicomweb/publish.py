"""STOW-RS a slide's SM and ANN instances, idempotently, and prove they arrived.

Per series: QIDO-RS lists what the server already holds. An instance it holds is retrieved
(WADO-RS, stored transfer syntax) and compared with our file as it arrives: equal -> nothing is
sent; different -> it is stored again under the same SOP Instance UID, replacing the old copy
(the UIDs are deterministic, so a reconverted slide keeps its UIDs). Only missing or changed
instances are sent, one per request, straight from the file (`streaming`): a failure names its
instance, and memory stays at a few MiB even for the 13.5 GB level 0 of a full BMDeep slide.

After storing: QIDO-RS must list every instance of ours; WADO-RS must return, for each image,
its first frame byte for byte as our file holds it, and for each annotation object (no frames)
the object itself, equal to ours. A server that keeps the old copy of a changed instance (Orthanc
without `OverwriteInstances`) fails this check with a message saying so.

Transient failures (connection errors, 408/429/5xx) are retried a bounded number of times with
backoff; anything else fails at once with the instance and the server's answer.

Time is bounded (`PublishLimits`): each request waits at most `timeout` seconds for an answer,
and a slide's whole publication at most `slide_seconds(bytes)`, after which it fails, naming
the step it was in. A server that could not be reached (refused, silent or gone past the
retries) is remembered for the process: each later slide first asks it once, briefly
(`probe_seconds`), and fails at once with the first slide's reason if it still does not answer,
instead of waiting the same minutes again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import requests
from pydicom import Dataset

from bms_pipeline.core.dicom.files import read_dataset
from bms_pipeline.core.dicomweb.config import TIMEOUT_ENV, auth_from_env
from bms_pipeline.core.dicomweb.streaming import (
    Comparison,
    first_frame_of_file,
    server_copy_matches,
    stow_file,
)
from bms_pipeline.core.privacy.credentials import Credentials, redact

if TYPE_CHECKING:
    from bms_pipeline.core.layout import DataLayout

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
STORED_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # as stored: no transcoding
ANY_FRAME = (("application/octet-stream", "*"),)


class DicomwebClient(Protocol):
    """The `dicomweb_client.DICOMwebClient` methods this module calls, typed as that library
    annotates them: pyright cannot resolve its `pydicom.dataset.Dataset` annotations (it
    imports only `pydicom`), so strict checking would see them as Unknown."""

    _timeout: float | tuple[float, float]

    def search_for_studies(
        self, *, limit: int | None = None
    ) -> list[dict[str, dict[str, Any]]]: ...
    def search_for_instances(
        self,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        *,
        fields: Sequence[str] | None = None,
        get_remaining: bool = False,
    ) -> list[dict[str, dict[str, Any]]]: ...
    def retrieve_instance(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: tuple[str | tuple[str, str], ...] | None = None,
    ) -> Dataset: ...
    def retrieve_instance_frames(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        frame_numbers: Sequence[int],
        media_types: tuple[str | tuple[str, str], ...] | None = None,
    ) -> list[bytes]: ...
    def store_instances(
        self, datasets: Sequence[Dataset], study_instance_uid: str | None = None
    ) -> Dataset: ...
    def delete_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> None: ...


class DicomwebError(RuntimeError):
    """A publication failure: the instance (file), the server and what the server answered."""


class ServerUnreachable(DicomwebError):
    """The server did not answer (refused, silent past the timeouts, or the slide's time
    ran out): later slides of the process fail fast with this reason."""


@dataclass(frozen=True)
class PublishLimits:
    """How long a publication may wait. A silent server costs one slide at most about
    `attempts` x `timeout` (the slide's budget at least); every later slide `probe_seconds`."""

    timeout: float = 60.0  # per request, for the server's answer (and to connect, at most 10 s)
    attempts: int = 3
    backoff: float = 1.0
    base_seconds: float = 180.0
    min_bytes_per_second: float = 1 << 20  # a slide's upload may take bytes / 1 MiB/s on top
    probe_seconds: float = 5.0
    large_instance_bytes: int = 1 << 31
    """A failed STOW-RS of an instance this large says how to split it: more than servers
    such as Orthanc hold (`LARGE_INSTANCE_HINT`)."""

    @classmethod
    def from_env(cls) -> PublishLimits:
        """`$BMS_DICOMWEB_TIMEOUT` seconds per request (default 60); the slide's base budget
        is three of them."""
        import os

        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return cls()
        try:
            timeout = float(raw)
        except ValueError:
            raise DicomwebError(f"${TIMEOUT_ENV}: not a number of seconds") from None
        if timeout <= 0:
            raise DicomwebError(f"${TIMEOUT_ENV}: must be more than 0 seconds")
        return cls(timeout=timeout, base_seconds=3 * timeout, probe_seconds=min(5.0, timeout))

    @property
    def request_timeout(self) -> tuple[float, float]:
        """(connect, read) for requests."""
        return (min(10.0, self.timeout), self.timeout)

    def slide_seconds(self, total_bytes: int) -> float:
        return self.base_seconds + total_bytes / self.min_bytes_per_second

    def transfer_timeout(self, size: int) -> tuple[float, float]:
        """(connect, read) for sending or fetching one instance of `size` bytes: the server
        may take a while to answer after the last byte of a large one (Orthanc parses and
        writes it first), so the wait grows with the size, within the slide's budget."""
        return (min(10.0, self.timeout), self.timeout + size / self.min_bytes_per_second)


LARGE_INSTANCE_HINT = (
    "more than some servers and proxies take in one request (Orthanc keeps about three times "
    "an instance in memory; nginx refuses bodies over client_max_body_size): "
    "`conventions.sm.concatenate_frames` in collection.yaml writes the levels as Concatenations "
    "of smaller instances (README: Full-size slides on Orthanc)"
)


SMALL_INSTANCE = 64 << 20
"""Instances up to this size whose bytes differ from the server's copy are compared as data
sets too (read whole), so a server that encodes the same content differently is not sent
every small object again; larger ones are sent again (the log says why)."""


_UNREACHABLE: dict[str, str] = {}  # server URL -> why it was given up, for this process


def forget_unreachable(url: str | None = None) -> None:
    """Forget the servers given up (all, or one): the next slide waits the full limits."""
    if url is None:
        _UNREACHABLE.clear()
    else:
        _UNREACHABLE.pop(url, None)


@dataclass(frozen=True)
class LocalInstance:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    size: int

    @property
    def label(self) -> str:
        return f"{self.path.parent.name}/{self.path.name} (SOP Instance UID {self.sop_uid})"


@dataclass
class PublishReport:
    server: str
    auth: str
    instances: int = 0  # ours, SM + ANN
    stored: list[str] = field(default_factory=list[str])  # new on the server
    replaced: list[str] = field(default_factory=list[str])  # were there with other content
    unchanged: list[str] = field(default_factory=list[str])
    left_on_server: list[str] = field(default_factory=list[str])  # in our series there, not ours
    bytes_sent: int = 0
    seconds: float = 0.0
    verified_frames: int = 0
    verified_objects: int = 0
    # series UID -> instances on the server
    series: dict[str, int] = field(default_factory=dict[str, int])


def ensure_publishable(layout: DataLayout, slide_id: str) -> None:
    """Publish only without validation errors: raises unless the slide's validation verdict
    (`out/validation/<slide_id>.parquet`) has no Error. The blocking checks gate publication
    within a run; the verdict on disk is re-read here in case publication runs on its own."""
    import polars as pl

    from bms_pipeline.core.validation.report import errors_of

    verdict = layout.validation_parquet(slide_id)
    errors = errors_of(pl.read_parquet(verdict)).height
    if errors:
        raise DicomwebError(f"{slide_id}: not published, {errors} validation error(s) in {verdict}")


def slide_instances(sm_dir: Path, ann_dir: Path) -> list[LocalInstance]:
    """Every .dcm of the slide's sm/ and ann/ folders (headers only)."""
    found: list[LocalInstance] = []
    for folder in (sm_dir, ann_dir):
        for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
            ds = read_dataset(
                path,
                stop_before_pixels=True,
                specific_tags=[
                    "StudyInstanceUID",
                    "SeriesInstanceUID",
                    "SOPInstanceUID",
                    "Modality",
                ],
            )
            found.append(
                LocalInstance(
                    path,
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                    str(ds.SOPInstanceUID),
                    str(ds.Modality),
                    path.stat().st_size,
                )
            )
    if not found:
        raise DicomwebError(f"{sm_dir.parent}: no DICOM files in sm/ or ann/ to publish")
    return found


def make_session(credentials: Credentials | None = None) -> tuple[requests.Session, str]:
    """A requests session authenticated by the URL's own credentials or the environment,
    and how (the kind only)."""
    description, auth, headers = auth_from_env(credentials)
    session = requests.Session()
    if auth is not None:
        session.auth = auth  # pyright: ignore[reportAttributeAccessIssue]
    session.headers.update(headers)
    return session, description


def make_client(
    url: str,
    timeout: float | tuple[float, float] = PublishLimits().request_timeout,
    credentials: Credentials | None = None,
    session: requests.Session | None = None,
) -> tuple[DicomwebClient, str]:
    """A dicomweb-client for `url` (without credentials), on `session` (by default one
    authenticated by the URL's own credentials or the environment); its own retries are off
    (this module retries, boundedly, so that each attempt is logged against its instance)."""
    from dicomweb_client.api import DICOMwebClient

    description = "given session"
    if session is None:
        session, description = make_session(credentials)
    client = DICOMwebClient(url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return cast("DicomwebClient", client), description


def _answer(exc: BaseException) -> str:
    """What the server said, short: status and the start of its body, or the connection error
    (credentials masked, should a library quote a URL that held them)."""
    response = getattr(exc, "response", None)
    if response is not None:
        body = (response.text or "").strip().replace("\n", " ")
        return redact(f"HTTP {response.status_code} {response.reason}: {body[:300]}".rstrip(": "))
    return redact(f"{type(exc).__name__}: {exc}")


def _unanswered(exc: BaseException) -> bool:
    """No answer at all: refused, unresolvable, reset or silent past the timeout."""
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def _retriable(exc: BaseException) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    response = getattr(exc, "response", None)
    return response is not None and response.status_code in RETRIABLE_STATUS


def with_retries[T](
    what: str,
    server: str,
    call: Callable[[], T],
    attempts: int = 3,
    backoff: float = 1.0,
    deadline: float | None = None,
) -> T:
    """`call()`, retried on transient failures at most `attempts` times in all, and never
    begun again after `deadline` (a `time.monotonic()` value). A server that never answered
    raises `ServerUnreachable`."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (requests.RequestException, OSError) as exc:
            pause = backoff * 2 ** (attempt - 1)
            late = (
                attempt < attempts and deadline is not None and time.monotonic() + pause >= deadline
            )
            if attempt == attempts or not _retriable(exc) or late:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                kind = ServerUnreachable if _unanswered(exc) else DicomwebError
                verb = "did not answer" if _unanswered(exc) else "answered"
                limit = " (the slide's time for publishing ran out)" if late else ""
                # The message holds the answer; no chain, so that a summary that shows the
                # root cause shows this (the step, the server, the attempts), not urllib3's.
                raise kind(f"{what}: {server} {verb}{tries}{limit}: {_answer(exc)}") from None
            logger.warning("%s: attempt %d failed (%s); retrying", what, attempt, _answer(exc))
            time.sleep(pause)
    raise AssertionError("unreachable")


def _check_time(what: str, server: str, deadline: float | None, budget: float) -> None:
    """Refuse to begin `what` once the slide's time is spent."""
    if deadline is not None and time.monotonic() >= deadline:
        raise ServerUnreachable(
            f"{what}: not begun, the slide's {budget:.0f} s for publishing to {server} ran out"
        )


def _fail_fast_if_given_up(client: DicomwebClient, url: str, limits: PublishLimits) -> None:
    """A server given up earlier in this process: one brief request; if it still does not
    answer, fail now with the first reason (no minutes of retries per slide)."""
    reason = _UNREACHABLE.get(url)
    if reason is None:
        return
    # dicomweb-client has no setter for its timeout.
    saved = client._timeout  # noqa: SLF001  # pyright: ignore[reportPrivateUsage]
    probe = (min(limits.probe_seconds, 10.0), limits.probe_seconds)
    client._timeout = probe  # noqa: SLF001  # pyright: ignore[reportPrivateUsage]
    try:
        client.search_for_studies(limit=1)
    except requests.HTTPError:
        pass  # it answers, whatever it says: publish as usual
    except (requests.RequestException, OSError) as exc:
        raise ServerUnreachable(
            f"not published: {url} was given up earlier in this process ({reason}); "
            f"still no answer within {limits.probe_seconds:.0f} s ({_answer(exc)})"
        ) from None
    finally:
        client._timeout = saved  # noqa: SLF001  # pyright: ignore[reportPrivateUsage]
    forget_unreachable(url)


def _uids_on_server(
    client: DicomwebClient,
    server: str,
    study_uid: str,
    series_uid: str,
    attempts: int = 3,
    deadline: float | None = None,
) -> set[str]:
    def search() -> list[dict[str, dict[str, Any]]]:
        try:
            return client.search_for_instances(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                fields=["00080018"],
                get_remaining=True,
            )
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return []  # some servers answer 404 for a series they do not hold
            raise

    found = with_retries(
        f"QIDO-RS series {series_uid}", server, search, attempts, deadline=deadline
    )
    return {item["00080018"]["Value"][0] for item in found if "00080018" in item}


def _retrieve(
    client: DicomwebClient,
    server: str,
    inst: LocalInstance,
    attempts: int = 3,
    deadline: float | None = None,
) -> Dataset:
    return with_retries(
        f"WADO-RS {inst.label}",
        server,
        lambda: client.retrieve_instance(
            inst.study_uid, inst.series_uid, inst.sop_uid, media_types=STORED_TRANSFER_SYNTAX
        ),
        attempts,
        deadline=deadline,
    )


def _same_content(local: Dataset, remote: Dataset) -> bool:
    """Equal data sets (the file meta group is the server's business, e.g. its AE title)."""
    return local == remote


def _frames_equal(ours: bytes, theirs: bytes) -> bool:
    # A fragment is padded to even length; a server may return the frame without the pad byte.
    return ours == theirs or ours.rstrip(b"\0") == theirs.rstrip(b"\0")


def publish_slide(
    instances: Iterable[LocalInstance],
    url: str,
    client: DicomwebClient | None = None,
    attempts: int | None = None,
    delete_strays: bool = False,
    credentials: Credentials | None = None,
    limits: PublishLimits | None = None,
) -> PublishReport:
    """Store what the server lacks or holds differently, then verify everything (see module doc).

    `delete_strays` asks the server (DICOMweb DELETE, not supported by every server) to remove
    instances of our series that we no longer have; otherwise they are only reported.
    `credentials` are the URL's own (see `config.DicomwebTarget`); `limits` bound the time
    (default `PublishLimits.from_env()`)."""
    started = time.perf_counter()
    instances = list(instances)
    limits = limits or PublishLimits.from_env()
    attempts = attempts or limits.attempts
    session, auth = make_session(credentials)
    if client is None:
        client, _ = make_client(url, limits.request_timeout, session=session)
    else:
        auth = "given client"
    budget = limits.slide_seconds(sum(i.size for i in instances))
    deadline = time.monotonic() + budget
    _fail_fast_if_given_up(client, url, limits)
    report = PublishReport(server=url, auth=auth, instances=len(instances))
    wire = _Wire(client, session, url, limits, attempts, deadline)
    try:
        _publish(wire, instances, report, delete_strays, budget)
    except ServerUnreachable as exc:
        _UNREACHABLE[url] = str(exc)
        raise
    report.seconds = round(time.perf_counter() - started, 3)
    return report


@dataclass(frozen=True)
class _Wire:
    """One publication's connection: the DICOMweb client (QIDO-RS, frames, DELETE), the
    session the whole-file transfers stream on, and its limits."""

    client: DicomwebClient
    session: requests.Session
    url: str
    limits: PublishLimits
    attempts: int
    deadline: float

    def server_has_ours(self, inst: LocalInstance) -> bool:
        """Whether the server's copy of `inst` holds our file's content (see `streaming`)."""
        try:
            compared = with_retries(
                f"WADO-RS {inst.label}",
                self.url,
                lambda: server_copy_matches(
                    self.session,
                    self.url,
                    inst.study_uid,
                    inst.series_uid,
                    inst.sop_uid,
                    inst.path,
                    self.limits.transfer_timeout(inst.size),
                ),
                self.attempts,
                deadline=self.deadline,
            )
        except ValueError as exc:  # an answer that is not one Part-10 file: not ours
            compared = Comparison(False, f"the server's answer: {exc}")
        if compared.same:
            return True
        if inst.size <= SMALL_INSTANCE and _same_content(
            read_dataset(inst.path),
            _retrieve(self.client, self.url, inst, self.attempts, self.deadline),
        ):
            return True
        logger.info("%s: the server's copy differs (%s)", inst.label, compared.why)
        return False


def _publish(
    wire: _Wire,
    instances: list[LocalInstance],
    report: PublishReport,
    delete_strays: bool,
    budget: float,
) -> None:
    client, url, attempts, deadline = wire.client, wire.url, wire.attempts, wire.deadline
    by_series: dict[tuple[str, str], list[LocalInstance]] = {}
    for inst in instances:
        by_series.setdefault((inst.study_uid, inst.series_uid), []).append(inst)

    to_store: list[tuple[LocalInstance, bool]] = []  # (instance, replacing)
    for (study_uid, series_uid), members in by_series.items():
        _check_time(f"QIDO-RS series {series_uid}", url, deadline, budget)
        present = _uids_on_server(client, url, study_uid, series_uid, attempts, deadline)
        ours = {m.sop_uid for m in members}
        report.left_on_server.extend(sorted(present - ours))
        for inst in members:
            if inst.sop_uid not in present:
                to_store.append((inst, False))
            elif wire.server_has_ours(inst):
                report.unchanged.append(inst.sop_uid)
            else:
                to_store.append((inst, True))
        if delete_strays:
            for stray in sorted(present - ours):
                with_retries(
                    f"DELETE instance {stray}",
                    url,
                    lambda s=stray, st=study_uid, se=series_uid: client.delete_instance(st, se, s),
                    attempts,
                    deadline=deadline,
                )
                report.left_on_server.remove(stray)

    for inst, replacing in to_store:
        _check_time(f"STOW-RS {inst.label}", url, deadline, budget)
        try:
            answer = with_retries(
                f"STOW-RS {inst.label}",
                url,
                lambda inst=inst: stow_file(
                    wire.session,
                    url,
                    inst.study_uid,
                    inst.path,
                    wire.limits.transfer_timeout(inst.size),
                ),
                attempts,
                deadline=deadline,
            )
        except DicomwebError as exc:
            if inst.size < wire.limits.large_instance_bytes:
                raise
            size = f"{inst.size / 1e9:.2f} GB"
            raise type(exc)(f"{exc} (the instance is {size}, {LARGE_INSTANCE_HINT})") from None
        failed: Sequence[Dataset] = answer.get("FailedSOPSequence") or []
        if failed:
            reason = failed[0].get("FailureReason", "no reason given")
            raise DicomwebError(f"STOW-RS {inst.label}: {url} refused it (FailureReason {reason})")
        (report.replaced if replacing else report.stored).append(inst.sop_uid)
        report.bytes_sent += inst.size
        logger.info(
            "stored %s%s", inst.label, " (replacing the server's copy)" if replacing else ""
        )

    _verify(wire, by_series, {i.sop_uid for i, r in to_store if r}, report)


def _verify(
    wire: _Wire,
    by_series: dict[tuple[str, str], list[LocalInstance]],
    replaced: set[str],
    report: PublishReport,
) -> None:
    client, url, attempts, deadline = wire.client, wire.url, wire.attempts, wire.deadline
    missing: list[str] = []
    for (study_uid, series_uid), members in by_series.items():
        present = _uids_on_server(client, url, study_uid, series_uid, attempts, deadline)
        missing.extend(m.label for m in members if m.sop_uid not in present)
        report.series[series_uid] = len(present)
    if missing:
        raise DicomwebError(
            f"QIDO-RS after STOW-RS: {url} accepted but does not list {', '.join(missing)} "
            "(the server dropped them; its log says why)"
        )
    old_copy = (
        " (the server kept its old copy: it must overwrite instances stored again, e.g. "
        "Orthanc's OverwriteInstances)"
    )
    for members in by_series.values():
        for inst in members:
            if inst.modality == "SM":
                ours = first_frame_of_file(inst.path)
                theirs = with_retries(
                    f"WADO-RS frame 1 of {inst.label}",
                    url,
                    lambda inst=inst: client.retrieve_instance_frames(
                        inst.study_uid, inst.series_uid, inst.sop_uid, [1], media_types=ANY_FRAME
                    ),
                    attempts,
                    deadline=deadline,
                )[0]
                if not _frames_equal(ours, theirs):
                    raise DicomwebError(
                        f"WADO-RS frame 1 of {inst.label} from {url}: {len(theirs)} bytes that differ "
                        f"from the file's {len(ours)}"
                        + (old_copy if inst.sop_uid in replaced else "")
                    )
                report.verified_frames += 1
                if inst.sop_uid in replaced and not wire.server_has_ours(inst):
                    raise DicomwebError(
                        f"WADO-RS {inst.label} from {url}: still the old copy after storing the changed "
                        "one (the server must overwrite instances stored again, e.g. Orthanc's "
                        "OverwriteInstances)"
                    )
            else:
                if not wire.server_has_ours(inst):
                    raise DicomwebError(
                        f"WADO-RS {inst.label} from {url}: differs from the file"
                        + (old_copy if inst.sop_uid in replaced else "")
                    )
                report.verified_objects += 1
