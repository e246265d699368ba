"""Audit records for people and other tools: CSV, a JSON array, one-line summaries (pure).

The functions write to a text stream they are given and open nothing.
``since`` and ``until`` select records by ``time`` (wall-clock seconds):
``since <= time < until``, either bound optional.

CSV has a header row and one row per record; ``violations`` is a compact
JSON array in one column, and ``time_iso`` repeats ``time`` in UTC. A text
cell that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return) is prefixed with an apostrophe; the JSON
export is the faithful copy.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Iterable, Iterator
from typing import Final, Literal, TextIO

import msgspec

from mas.audit.record import AuditRecord

CSV_COLUMNS: Final = (
    "seq",
    "time",
    "time_iso",
    "decision",
    "reason",
    "message_id",
    "sender_id",
    "sender_instance_id",
    "target_id",
    "message_type",
    "correlation_id",
    "violations",
    "latency_ms",
    "payload_sha256",
    "server_id",
    "prev_hash",
    "hash",
)
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def iso_time(t: float) -> str:
    """``t`` (seconds since the epoch) as ``2026-11-24T09:00:00.123Z``, or the number itself."""
    try:
        moment = datetime.datetime.fromtimestamp(t, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return repr(t)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> float:
    """Seconds since the epoch from ``1795510800.5`` or ISO 8601 (``2026-11-24T09:00:00Z``).

    A time without a zone is taken as UTC. Raises ValueError naming both forms.
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give seconds since the epoch or ISO 8601"
            " (2026-11-24T09:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def in_window(record: AuditRecord, since: float | None, until: float | None) -> bool:
    """Whether ``since <= record.time < until`` (a missing bound does not limit)."""
    return (since is None or record.time >= since) and (until is None or record.time < until)


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _row(record: AuditRecord) -> list[str]:
    fields = msgspec.structs.asdict(record)
    fields["violations"] = msgspec.json.encode(record.violations).decode()
    fields["time_iso"] = iso_time(record.time)
    row: list[str] = []
    for column in CSV_COLUMNS:
        value = fields[column]
        row.append(_cell(value) if isinstance(value, str) else repr(value))
    return row


def export(
    records: Iterable[AuditRecord],
    format: Literal["csv", "json"],
    out: TextIO,
    since: float | None = None,
    until: float | None = None,
) -> int:
    """Write the records in the time window to ``out`` as CSV or a JSON array.

    Returns how many records were written. Raises ValueError for an unknown format.
    """
    selected: Iterator[AuditRecord] = (r for r in records if in_window(r, since, until))
    count = 0
    if format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for record in selected:
            writer.writerow(_row(record))
            count += 1
    elif format == "json":
        out.write("[")
        for record in selected:
            out.write(",\n" if count else "\n")
            out.write(msgspec.json.encode(record).decode())
            count += 1
        out.write("\n]\n" if count else "]\n")
    else:
        raise ValueError(f"unknown export format {format!r}: use 'csv' or 'json'")
    return count


def _clean(text: str) -> str:
    """``text`` with control characters escaped, so a field cannot steer a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def format_tail_line(record: AuditRecord) -> str:
    """One line for a person::

    2026-11-24T09:00:00.123Z ALLOWED ping/abc -> pong patient_message msg=m1 corr=c1

    followed by ``reason=...`` and ``violations=<rule ids>`` when present;
    an empty field shows as ``-``.
    """
    sender = record.sender_id or "-"
    if record.sender_instance_id:
        sender += "/" + record.sender_instance_id
    parts = [
        iso_time(record.time),
        record.decision,
        sender,
        "->",
        record.target_id or "-",
        record.message_type or "-",
        f"msg={record.message_id or '-'}",
        f"corr={record.correlation_id or '-'}",
    ]
    if record.reason:
        parts.append(f"reason={record.reason}")
    if record.violations:
        parts.append("violations=" + ",".join(v.rule_id for v in record.violations))
    return _clean(" ".join(parts))


def format_json_line(record: AuditRecord) -> str:
    """The record as stored, as one line of JSON (for ``tail --json``)."""
    return msgspec.json.encode(record).decode()
