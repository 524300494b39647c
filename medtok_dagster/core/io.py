"""Strict and lenient readers for the platform's raw inputs, and atomic writers for its artifacts.

Every reader reports bad input as an :class:`InputError` that names the file and the line, so a user
with a 25 GB corpus can find the offending record. Lenient readers skip bad records instead and
return a :class:`SkipReport` that the Dagster layer shows as metadata.

Every writer goes through a temporary sibling and ``os.replace``/``rename``, so a crash or a kill
leaves the previous artifact intact and never a half-written one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import shutil
import socket
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UTF8_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """Bad input, located: the message always starts with ``path:line``."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        self.path = Path(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {message}")


@dataclass
class SkipReport:
    """What a lenient reader skipped or repaired, by reason, with the first few locations."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20

    def add(self, reason: str, path: Path, line: int | None) -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(
                f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}"
            )

    def merge(self, other: SkipReport) -> None:
        self.counts.update(other.counts)
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[: max(room, 0)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def require_nonempty_file(path: Path) -> None:
    """Fail early on a missing or empty input: an empty corpus is never a meaningful run."""
    if not path.exists():
        raise InputError(path, None, "file does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(path, None, "file is empty")


def _decode_line(
    raw: bytes, path: Path, line_no: int, lenient: bool, skips: SkipReport
) -> str | None:
    if line_no == 1 and raw.startswith(UTF8_BOM):
        if not lenient:
            raise InputError(
                path, line_no, "UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM"
            )
        skips.add("bom_stripped", path, line_no)
        raw = raw[len(UTF8_BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not lenient:
            raise InputError(
                path,
                line_no,
                f"not valid UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 4]!r}); "
                "re-encode the file as UTF-8 (CP949/EUC-KR files need `iconv -f cp949 -t utf-8`)",
            ) from exc
        skips.add("invalid_utf8", path, line_no)
        return None


def iter_text_lines(
    path: Path,
    lenient: bool = False,
    skips: SkipReport | None = None,
    max_line_bytes: int = 1 << 20,
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a UTF-8 text file, streaming.

    Lines longer than ``max_line_bytes`` are rejected (strict) or skipped (lenient): a single
    megabyte line is almost always a broken export, and would dominate n-gram counts.
    """
    skips = skips if skips is not None else SkipReport()
    require_nonempty_file(path)
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            if len(raw) > max_line_bytes:
                if not lenient:
                    raise InputError(
                        path,
                        line_no,
                        f"line of {len(raw):,} bytes exceeds the {max_line_bytes:,}-byte limit",
                    )
                skips.add("line_too_long", path, line_no)
                continue
            text = _decode_line(raw, path, line_no, lenient, skips)
            if text is not None:
                yield line_no, text


@dataclass
class JsonlRecord:
    """One parsed JSONL object with the line it came from (for error messages downstream)."""

    line: int
    data: dict[str, Any]


def read_jsonl(
    path: Path, required: Sequence[str] = (), lenient: bool = False, skips: SkipReport | None = None
) -> tuple[list[JsonlRecord], SkipReport]:
    """Read a JSONL file of objects, checking that each has the ``required`` fields.

    Blank lines are ignored. Strict mode raises :class:`InputError` at the first bad line; lenient
    mode skips it and counts the reason (``malformed_json``, ``not_an_object``, ``missing_field``,
    ``invalid_utf8``, ``bom_stripped``, ``line_too_long``).
    """
    skips = skips if skips is not None else SkipReport()
    records: list[JsonlRecord] = []
    for line_no, text in iter_text_lines(path, lenient, skips):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if not lenient:
                raise InputError(
                    path, line_no, f"malformed JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            skips.add("malformed_json", path, line_no)
            continue
        if not isinstance(data, dict):
            if not lenient:
                raise InputError(
                    path, line_no, f"expected a JSON object, got {type(data).__name__}"
                )
            skips.add("not_an_object", path, line_no)
            continue
        missing = [name for name in required if name not in data or data[name] is None]
        if missing:
            if not lenient:
                raise InputError(path, line_no, f"missing field(s): {', '.join(missing)}")
            skips.add("missing_field", path, line_no)
            continue
        records.append(JsonlRecord(line_no, data))
    if not records:
        raise InputError(
            path, None, "no usable records (file has no JSON objects left after validation)"
        )
    return records, skips


def read_json(path: Path) -> Any:
    """Parse a JSON document, turning decode errors into a located :class:`InputError`."""
    require_nonempty_file(path)
    raw = path.read_bytes()
    if raw.startswith(UTF8_BOM):
        raise InputError(path, 1, "UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(path, line, "not valid UTF-8; re-encode the file as UTF-8") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            path, exc.lineno, f"malformed JSON ({exc.msg} at column {exc.colno})"
        ) from exc


_TEMPORARY = re.compile(r"\.(?P<final>.+)\.(?:tmp|old)-[0-9a-f]{8}-(?P<pid>\d+)@(?P<host>[^@/]+)")
"""``.<final name>.tmp-<random>-<pid>@<host>``: who wrote a temporary, so a dead writer's can be removed."""
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _temp_sibling(final: Path, kind: str) -> Path:
    return (
        final.parent
        / f".{final.name}.{kind}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_alive(match: re.Match[str]) -> bool | None:
    """Whether a temporary's writer still runs; ``None`` when it ran on another host (unknowable here)."""
    if match["host"] != socket.gethostname():
        return None
    return _pid_alive(int(match["pid"]))


def _remove_temporary(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _remove_dead_siblings(final: Path) -> int:
    """Remove what killed writers of ``final`` on this host left behind (live writers' staging is kept)."""
    removed = 0
    prefix = f".{final.name}."
    for entry in final.parent.iterdir():
        match = _TEMPORARY.fullmatch(entry.name) if entry.name.startswith(prefix) else None
        if match is not None and match["final"] == final.name and _writer_alive(match) is False:
            _remove_temporary(entry)
            removed += 1
    return removed


@functools.cache
def _renameat2() -> Any:
    """glibc's ``renameat2`` (Linux), or ``None`` where the platform or C library lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
    return function


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step; ``False`` where the OS or filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if (
        renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
        == 0
    ):
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _swap_into_place(staging: Path, final: Path) -> None:
    """Put ``staging`` at ``final`` so that ``final`` is never missing or partial.

    On Linux the two directories are exchanged in one ``renameat2`` call, so a reader or a kill at
    any moment finds a complete version; elsewhere the old directory is renamed aside first, which
    leaves ``final`` missing for the microseconds between two renames.
    """
    if not final.exists():
        os.rename(staging, final)
    elif _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)
    else:
        retired = _temp_sibling(final, "old")
        os.rename(final, retired)
        os.rename(staging, final)
        shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling and swap it into place only if the block succeeds.

    The previous version stays readable until the swap; on error the temporary directory is
    removed, so neither a crash nor an exception leaves a partial directory under ``final``, and
    the staging directory of a writer killed earlier is removed before a new one is made.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_siblings(final)
    staging = _temp_sibling(final, "tmp")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_into_place(staging, final)


def atomic_write_bytes(final: Path, payload: bytes) -> Path:
    """Write a file through a temporary sibling plus ``os.replace`` (atomic on POSIX).

    A killed writer's temporary file is removed by the next write of the same file.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_siblings(final)
    staging = _temp_sibling(final, "tmp")
    try:
        with staging.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, final)
    finally:
        staging.unlink(missing_ok=True)
    return final


def atomic_write_text(final: Path, text: str) -> Path:
    """UTF-8 text through :func:`atomic_write_bytes`."""
    return atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: Path, payload: Any) -> Path:
    """Pretty, UTF-8 (not ASCII-escaped) JSON through :func:`atomic_write_bytes`."""
    return atomic_write_text(final, json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


def remove_stale_temporaries(directory: Path) -> int:
    """Delete leftovers of killed writers (``.name.tmp-*``/``.name.old-*``) and return how many.

    The staging of a writer still running on this host is kept; another host's is removed, so run
    this only while no other machine writes to ``directory``.
    """
    if not directory.is_dir():
        return 0
    removed = 0
    for entry in directory.iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
            match = _TEMPORARY.fullmatch(entry.name)
            if match is not None and _writer_alive(match):
                continue
            _remove_temporary(entry)
            removed += 1
    return removed


@dataclass(frozen=True)
class Fingerprint:
    """A cheap version of a file or directory tree: names, sizes and mtimes, never contents."""

    version: str
    files: int
    bytes: int


def tree_fingerprint(path: Path) -> Fingerprint:
    """Hash relative names, sizes and ``mtime_ns`` of every file under ``path`` (or of ``path`` itself).

    Cheap enough to run hourly on a 25 GB corpus (one ``stat`` per file), and still changes when a
    shard is added, removed, rewritten or touched.
    """
    import hashlib

    digest = hashlib.sha256()
    files = total = 0
    if not path.exists():
        return Fingerprint("missing", 0, 0)
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for entry in entries:
        stat = entry.stat()
        name = entry.name if entry == path else entry.relative_to(path).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        files += 1
        total += stat.st_size
    return Fingerprint(digest.hexdigest()[:16], files, total)
