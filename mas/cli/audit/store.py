"""``mas audit verify | tail | export`` on the chain in the store.

The same contract as :mod:`mas.cli.audit.files` (``(exit status, message)``, records
to ``out``, nothing raised for bad content), over a
:class:`~mas.audit.store_trail.StoreTrail` instead of JSONL files. The store
holds the authoritative chain; the JSONL file is a copy of it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Literal, TextIO

from mas.audit.chain import verify
from mas.audit.diagnosis import Unreadable
from mas.audit.export import export
from mas.audit.record import AuditRecord
from mas.audit.store_trail import StoreTrail, TrailError, iter_trail
from mas.cli.audit.files import ok_message, selected_by, unkeyed_verdict, write_records
from mas.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def _unreadable_note(skipped: list[Unreadable]) -> str:
    first = skipped[0]
    return (
        f"{len(skipped)} unreadable record(s) skipped (first: {first.where}: {first.detail});"
        " run `mas audit verify --store`"
    )


def verify_store(trail: StoreTrail, key: bytes | None) -> tuple[int, str]:
    """Verify the store's chain from its anchor (records trimmed by retention) to its end."""
    try:
        anchor = trail.anchor()
        report = verify(iter_trail(trail), key, removed=anchor)
    except TrailError as exc:
        return EXIT_USAGE, str(exc)
    problem = report.problem
    if problem is None:
        verdict = unkeyed_verdict(report) if key is not None else None
        if verdict is not None:
            return EXIT_FAILED, verdict
        return EXIT_OK, ok_message(report, f"in {trail.where}", key is not None)
    return EXIT_FAILED, (
        f"audit chain TAMPERED ({problem.kind}) at seq {problem.seq} in {trail.where}:"
        f" {problem.detail}. The {report.checked} record(s) before it are sound."
    )


def tail_store(
    trail: StoreTrail,
    *,
    follow: bool,
    as_json: bool,
    decision: str | None,
    agent: str | None,
    out: TextIO,
    poll_interval: float = 0.5,
    max_polls: int | None = None,
    last: int | None = None,
) -> tuple[int, str]:
    """Print the store's records (the ``last`` N of them, if given), then follow new ones."""
    wanted = None if decision is None else decision.upper()
    skipped: list[Unreadable] = []
    seen = 0  # the highest seq read so far

    def keep(entries: Iterable[AuditRecord | Unreadable]) -> Iterator[AuditRecord]:
        nonlocal seen
        for entry in entries:
            if isinstance(entry, Unreadable):
                skipped.append(entry)
                continue
            seen = entry.seq
            if selected_by(entry, wanted, agent):
                yield entry

    def show(records: Iterable[AuditRecord]) -> None:
        write_records(out, records, as_json=as_json)

    try:
        selected = keep(iter_trail(trail))
        show(selected if last is None else deque(selected, maxlen=max(last, 0)))
        polls = 0
        while follow and (max_polls is None or polls < max_polls):
            time.sleep(poll_interval)
            polls += 1
            show(keep(iter_trail(trail, seen)))
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the command line ends quietly
    except TrailError as exc:
        return EXIT_USAGE, str(exc)
    return (EXIT_FAILED, _unreadable_note(skipped)) if skipped else (EXIT_OK, "")


def export_store(
    trail: StoreTrail,
    fmt: Literal["csv", "json"],
    since: float | None,
    until: float | None,
    out: TextIO,
) -> tuple[int, str]:
    """Export the store's records with ``since <= time < until`` as CSV or JSON."""
    skipped: list[Unreadable] = []

    def records() -> Iterator[AuditRecord]:
        for entry in iter_trail(trail):
            if isinstance(entry, Unreadable):
                skipped.append(entry)
            else:
                yield entry

    try:
        count = export(records(), fmt, out, since, until)
    except BrokenPipeError:
        raise
    except TrailError as exc:
        return EXIT_USAGE, str(exc)
    message = f"exported {count} record(s) from {trail.where}"
    return (
        (EXIT_FAILED, f"{message}; {_unreadable_note(skipped)}") if skipped else (EXIT_OK, message)
    )
