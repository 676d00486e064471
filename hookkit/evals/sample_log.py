"""Per-sample JSONL logs of the eval runner: one strict-JSON line per record, appended atomically.

A record reaches the disk as one ``os.write`` of its complete line on an ``O_APPEND`` descriptor followed by
``fsync``, so a crash leaves at most one torn last line, which reading detects and reopening repairs; duplicates
(a resumed or retried sample) are resolved by :func:`dedup_records`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hookkit.evals.files import to_jsonable
from hookkit.evals.results import stable_record

logger = logging.getLogger(__name__)

Record = dict[str, Any]

__all__ = ["SampleLog", "dedup_records", "encode_record", "is_error_record", "read_jsonl"]




def encode_record(record: Mapping[str, Any]) -> bytes:
    """One JSONL line: ``sample_id`` first, then the record's own key order; strict JSON, UTF-8."""
    rec = to_jsonable(record)
    ordered = {"sample_id": rec["sample_id"], **{k: v for k, v in rec.items() if k != "sample_id"}}
    return (json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


def is_error_record(record: Mapping[str, Any]) -> bool:
    return bool(record.get("error"))


def read_jsonl(path: str | os.PathLike[str]) -> tuple[list[Record], int, bool]:
    """Read a per-sample JSONL log, tolerating a torn last line.

    Returns:
        ``(records, good_size, torn)``: the parsed records in file order (duplicates kept), the byte length of
        the intact prefix, and whether a trailing partial or unparsable line was ignored.

    Raises:
        ValueError: for an unparsable line *before* the last one (that is corruption, not a crash artifact),
            or a record without a string ``sample_id``.
    """
    data = Path(path).read_bytes()
    records: list[Record] = []
    lines = data.split(b"\n")
    # After the final "\n" comes either b"" (clean end) or a partial line written when the process died.
    torn = lines[-1] != b""
    complete = lines[:-1]
    good_size = 0
    for lineno, raw in enumerate(complete, start=1):
        if raw.strip():
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if lineno == len(complete) and not torn:
                    torn = True  # garbage on the last line (e.g. zero-filled block after power loss)
                    break
                raise ValueError(
                    f"{path}:{lineno}: corrupt JSON line in the middle of a sample log ({exc}); "
                    "fix or delete that line and resume"
                ) from exc
            if not isinstance(record, dict) or not isinstance(record.get("sample_id"), str):
                raise ValueError(f"{path}:{lineno}: record without a string 'sample_id'")
            records.append(record)
        good_size += len(raw) + 1
    return records, good_size, torn


def dedup_records(records: Iterable[Record], source: str, *, quiet_identical: bool = False) -> list[Record]:
    """De-duplicate by ``sample_id`` in first-appearance order.

    The first successful record of an id wins; an id with only error records keeps its first error record.
    Duplicates are logged as warnings, except a successful retry superseding an error record (info) and, with
    ``quiet_identical``, duplicates whose stable fields agree (debug; a merged file and a rank log both hold the
    record when a run was killed between writing the merged file and deleting the rank logs).
    """
    kept: dict[str, Record] = {}
    for record in records:
        sid = record["sample_id"]
        first = kept.get(sid)
        if first is None:
            kept[sid] = record
        elif is_error_record(first) and not is_error_record(record):
            logger.info("%s: sample %r: successful retry supersedes error record", source, sid)
            kept[sid] = record
        elif quiet_identical and stable_record(first) == stable_record(record):
            logger.debug("%s: identical duplicate of sample %r ignored", source, sid)
        else:
            logger.warning("%s: duplicate records for sample %r; keeping the first", source, sid)
    return list(kept.values())


class SampleLog:
    """Append-only per-sample JSONL store that survives being killed at any point.

    Each :meth:`append` / :meth:`extend` issues a single ``os.write`` of the complete line(s) on an ``O_APPEND``
    descriptor followed by ``os.fsync``.  Opening a log whose last line is torn (the process died mid-write)
    truncates that partial line away and logs a warning.  Use one ``SampleLog`` per file per process.

    Args:
        path: The ``.jsonl`` file (created on first append; parent directories too).
        repair: Truncate a torn last line on open (default).  With False the partial line is only ignored.
    """

    def __init__(self, path: str | os.PathLike[str], *, repair: bool = True) -> None:
        self.path = Path(path)
        self._records: list[Record] = []
        self._fd: int | None = None
        self.n_appended = 0
        if self.path.exists():
            self._records, good_size, torn = read_jsonl(self.path)
            if torn:
                dropped = self.path.stat().st_size - good_size
                if repair:
                    os.truncate(self.path, good_size)
                    logger.warning(
                        "%s: dropped a torn last line (%d bytes) left by an interrupted run", self.path, dropped
                    )
                else:
                    logger.warning("%s: ignoring a torn last line (%d bytes)", self.path, dropped)

    def __enter__(self) -> SampleLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.completed_ids())

    def close(self) -> None:
        """Close the file descriptor (appending again reopens it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, record: Mapping[str, Any]) -> None:
        """Durably append one record (must hold a string ``sample_id``)."""
        self.extend([record])

    def extend(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Durably append several records with one write and one fsync."""
        if not records:
            return
        for record in records:
            if not isinstance(record.get("sample_id"), str):
                raise ValueError(f"record without a string 'sample_id': {dict(record)!r:.120}")
        lines = [encode_record(r) for r in records]
        data = b"".join(lines)
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(data)
        while view:  # os.write on a regular file writes everything at once; loop only for exotic filesystems
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._records.extend(json.loads(line) for line in lines)
        self.n_appended += len(records)

    def raw_records(self) -> list[Record]:
        """Every record in file order, duplicates included."""
        return list(self._records)

    def records(self) -> list[Record]:
        """Records de-duplicated by ``sample_id`` (first wins, see module docs), in first-appearance order."""
        return dedup_records(self._records, str(self.path))

    def completed_ids(self, *, include_errors: bool = True) -> set[str]:
        """Sample ids that have a record (with ``include_errors=False``: a successful record)."""
        return {r["sample_id"] for r in self._records if include_errors or not is_error_record(r)}
