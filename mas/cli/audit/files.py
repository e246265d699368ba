"""``mas audit verify | tail | export`` on the JSONL sink files.

Each function returns a verdict ``(exit status, message)``; ``mas.cli.exits.verdict``
prints the message (to stderr, except for ``verify``, whose message is its result)
and the command exits with the status: ``EXIT_OK`` success, ``EXIT_FAILED`` the
trail is tampered or has unreadable lines, ``EXIT_USAGE`` the file is missing or
cannot be read. Record output goes to the ``out`` stream.
Nothing here raises for bad file content.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final, Literal, TextIO

from mas.audit.chain import verify
from mas.audit.diagnosis import Problem, Unreadable, VerifyReport, same_digest
from mas.audit.export import export, format_json_line, format_tail_line
from mas.audit.reader import (
    Head,
    decode_line,
    head_mac,
    head_path,
    iter_entries,
    read_head_file,
    rotated_files,
)
from mas.audit.record import AuditRecord
from mas.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE

_READ_CHUNK: Final = 65_536  # bytes read at a time while following a file


def selected_by(record: AuditRecord, decision: str | None, agent: str | None) -> bool:
    """Whether ``audit tail`` shows ``record`` for its ``--decision`` and ``--agent``."""
    return (decision is None or record.decision == decision) and (
        agent is None or agent in (record.sender_id, record.target_id)
    )


def write_records(out: TextIO, records: Iterable[AuditRecord], *, as_json: bool) -> None:
    """Write ``records`` as ``audit tail`` shows them (one line each), then flush."""
    for record in records:
        out.write((format_json_line(record) if as_json else format_tail_line(record)) + "\n")
    out.flush()


def _missing(path: Path) -> tuple[int, str]:
    return EXIT_USAGE, f"audit file {path} does not exist"


def _unreadable_note(skipped: list[Unreadable]) -> str:
    first = skipped[0]
    return (
        f"{len(skipped)} unreadable line(s) skipped (first: {first.where}: {first.detail});"
        " run `mas audit verify`"
    )


# --- verify ------------------------------------------------------------------------------


def _locate(problem: Problem, starts: list[tuple[int, Path]]) -> str:
    spot = [(first, file) for first, file in starts if first <= problem.index]
    if not spot or problem.kind == "truncated" or str(spot[-1][1]) in problem.detail:
        return ""
    first, file = spot[-1]
    return f" ({file} line {problem.index - first + 1})"


def _mode(report: VerifyReport, key: bool) -> str:
    if not key:
        return "unkeyed SHA-256: this proves only that nothing was corrupted by accident"
    if report.unkeyed:
        return (
            f"HMAC-SHA256 keyed; the first {report.unkeyed} record(s) are unkeyed, written"
            " before keys were default"
        )
    return "HMAC-SHA256 keyed"


def ok_message(report: VerifyReport, where: str, key: bool) -> str:
    """The verdict on a sound chain: its records, where it starts and what the key proves."""
    if report.head is None or report.first_seq is None:
        return f"audit trail OK: no records ({_mode(report, key)})"
    text = (
        f"audit trail OK: {report.checked} records, seq {report.first_seq} to"
        f" {report.head[0]}, {where} ({_mode(report, key)})"
    )
    if report.first_seq > 1:
        text += (
            f"; it starts at seq {report.first_seq}: records 1 to {report.first_seq - 1}"
            " were rotated away or trimmed, as its anchor records"
        )
    return text


def unkeyed_verdict(report: VerifyReport) -> str | None:
    """The failure to report when a key was given but no record of the chain is keyed."""
    if report.ok and report.checked and report.unkeyed == report.checked:
        return (
            f"audit trail NOT PROVEN: none of its {report.checked} record(s) is HMAC-keyed:"
            " it was written before keys were default, or rewritten by someone without the"
            " key; it proves only that nothing was corrupted by accident"
        )
    return None


def _head_check(head: Head | None, key: bytes | None, base: Path) -> tuple[int, str] | None:
    """A failure of the head file itself (a bad seal), or None."""
    if head is None or key is None or not head.mac:
        return None
    if not same_digest(head.mac, head_mac(head, key)):
        return EXIT_FAILED, (
            f"audit trail TAMPERED (edited): {head_path(base)} does not carry the chain's"
            " HMAC seal: the head or its anchor was rewritten without the key"
            " (or this is not the key the trail was written with)"
        )
    return None


def verify_file(path: str | os.PathLike[str], key: bytes | None) -> tuple[int, str]:
    """Verify the chain across the rotated files at ``path`` against its head file."""
    base = Path(path)
    files = rotated_files(base)
    if not files:
        return _missing(base)
    try:
        head = read_head_file(base)
    except ValueError as exc:
        return EXIT_FAILED, f"audit trail TAMPERED: {exc}"
    except OSError as exc:
        return EXIT_USAGE, f"cannot read the head file of {base}: {exc}"
    starts: list[tuple[int, Path]] = []  # (index of a file's first entry, file)

    def entries() -> Iterator[AuditRecord | Unreadable]:
        for index, (file, _, entry) in enumerate(iter_entries(files)):
            if not starts or starts[-1][1] != file:
                starts.append((index, file))
            yield entry

    try:
        report = verify(
            entries(),
            key,
            expected_head=None if head is None else (head.seq, head.hash),
            removed=None if head is None else head.anchor,
        )
    except OSError as exc:
        return EXIT_USAGE, f"cannot read audit file {base}: {exc}"
    problem = report.problem
    sealed = _head_check(head, key, base)  # after the records: a wrong key shows there first
    if problem is None and sealed is not None:
        return sealed
    if problem is None:
        verdict = unkeyed_verdict(report) if key is not None else None
        if verdict is not None:
            return EXIT_FAILED, verdict
        if key is not None and report.checked > report.unkeyed and (head is None or not head.mac):
            # The sink seals the head of a keyed trail after every batch: without a sealed
            # head, records could have been cut from the end and the head rewritten.
            state = "there is no head file" if head is None else "its head file is not sealed"
            return EXIT_FAILED, (
                f"audit trail NOT PROVEN: its {report.checked} record(s) are sound, but {state}"
                " with the key, so records cut from the end would go unnoticed (a head written"
                " by mas before heads were sealed is sealed by the server's next write)"
            )
        text = ok_message(report, f"in {len(files)} file(s)", key is not None)
        if head is None:
            text += "; there is no head file, so records cut from the end would go unnoticed"
        return EXIT_OK, text
    note = ""
    if problem.kind == "deleted" and problem.seq == 1 and (head is None or head.anchor is None):
        note = (
            " (no head file records an anchor for the records before it: a trail rotated"
            " by mas before anchors were kept shows this too)"
        )
    if key is None and problem.kind == "edited" and report.checked == 0:
        note += (
            "; if the trail is keyed (the default), verify it with its key:"
            " `mas audit verify --config mas.yaml`"
        )
    return EXIT_FAILED, (
        f"audit trail TAMPERED ({problem.kind}) at seq {problem.seq}{_locate(problem, starts)}:"
        f" {problem.detail}{note}. The {report.checked} record(s) before it are sound."
    )


# --- tail --------------------------------------------------------------------------------


class _Follower:
    """Complete lines of one open file; a partial last line waits for its end."""

    def __init__(self, file: Path, base: Path) -> None:
        self.file = file
        self.base = base  # the path a writer appends to; a new file there means rotation
        self.handle: BinaryIO = file.open("rb")
        self.inode = os.fstat(self.handle.fileno()).st_ino
        self.partial = b""
        self.number = 0

    def entries(self, final: bool) -> Iterator[AuditRecord | Unreadable]:
        while chunk := self.handle.read(_READ_CHUNK):
            *lines, self.partial = (self.partial + chunk).split(b"\n")
            for line in lines:
                self.number += 1
                yield decode_line(line + b"\n", f"{self.file} line {self.number}")
        if final and self.partial:
            self.number += 1
            yield decode_line(self.partial, f"{self.file} line {self.number}")
            self.partial = b""

    def rotated(self) -> bool:
        try:
            return os.stat(self.base).st_ino != self.inode
        except FileNotFoundError:  # between the rename and the new file: look again later
            return False


def _newer_backups(base: Path, inode: int) -> list[Path]:
    """The rotated files newer than the file with ``inode`` (all of them if it is gone)."""
    backups = [f for f in rotated_files(base) if f != base]
    inodes = [f.stat().st_ino for f in backups]
    return backups[inodes.index(inode) + 1 :] if inode in inodes else backups


def tail_file(
    path: str | os.PathLike[str],
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
    """Print the records at ``path`` (the ``last`` N of them, if given), then follow new ones.

    ``decision`` keeps one decision (any case); ``agent`` keeps records it sent
    or was the target of. Following re-reads the file every ``poll_interval``
    seconds, across rotation, ``max_polls`` times (None: until interrupted).
    """
    base = Path(path)
    files = rotated_files(base)
    if not files:
        return _missing(base)
    wanted = None if decision is None else decision.upper()
    skipped: list[Unreadable] = []

    def keep(entries: Iterable[AuditRecord | Unreadable]) -> Iterator[AuditRecord]:
        for entry in entries:
            if isinstance(entry, Unreadable):
                skipped.append(entry)
            elif selected_by(entry, wanted, agent):
                yield entry

    def show(records: Iterable[AuditRecord]) -> None:
        write_records(out, records, as_json=as_json)

    try:
        current = _Follower(files[-1], base)
    except OSError as exc:
        return EXIT_USAGE, f"cannot read audit file {base}: {exc}"
    initial = (entry for _, _, entry in iter_entries(files[:-1]))
    try:
        # A last line still being written is not shown until it is complete.
        selected = keep(itertools.chain(initial, current.entries(final=False)))
        show(selected if last is None else deque(selected, maxlen=max(last, 0)))
        polls = 0
        while follow and (max_polls is None or polls < max_polls):
            time.sleep(poll_interval)
            polls += 1
            show(keep(current.entries(final=False)))
            if current.rotated():
                show(keep(current.entries(final=True)))
                current.handle.close()
                show(keep(e for _, _, e in iter_entries(_newer_backups(base, current.inode))))
                current = _Follower(base, base)
                show(keep(current.entries(final=False)))
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the command line ends quietly
    except OSError as exc:
        return EXIT_USAGE, f"cannot read audit file {base}: {exc}"
    finally:
        current.handle.close()
    return (EXIT_FAILED, _unreadable_note(skipped)) if skipped else (EXIT_OK, "")


# --- export ------------------------------------------------------------------------------


def export_file(
    path: str | os.PathLike[str],
    fmt: Literal["csv", "json"],
    since: float | None,
    until: float | None,
    out: TextIO,
) -> tuple[int, str]:
    """Export the records at ``path`` with ``since <= time < until`` as CSV or JSON."""
    base = Path(path)
    files = rotated_files(base)
    if not files:
        return _missing(base)
    skipped: list[Unreadable] = []

    def records() -> Iterator[AuditRecord]:
        for _, _, entry in iter_entries(files):
            if isinstance(entry, Unreadable):
                skipped.append(entry)
            else:
                yield entry

    try:
        count = export(records(), fmt, out, since, until)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the command line ends quietly
    except OSError as exc:
        return EXIT_USAGE, f"cannot read audit file {base}: {exc}"
    message = f"exported {count} record(s) from {base}"
    return (
        (EXIT_FAILED, f"{message}; {_unreadable_note(skipped)}") if skipped else (EXIT_OK, message)
    )
