"""The JSONL audit file sink: append, fsync, rotate by size, keep a head (blocking I/O).

Files
    ``path`` holds the newest records, one JSON object per line (the record as
    stored, ``seq``, ``prev_hash`` and ``hash`` included); rotation renames it to
    ``path.1``, ``path.1`` to ``path.2`` and so on up to ``path.N``
    (``N = backup_count``); the oldest file is dropped. Read in the order
    ``path.N ... path.1, path``, the files hold one unbroken stretch of the chain,
    which starts after seq 1 once old files are gone. ``backup_count = 0`` turns
    rotation off (as in :mod:`logging.handlers`): an audit trail is never
    discarded by default.

    ``<path>.head`` (:class:`~mas.audit.reader.Head`) holds the seq and hash
    of the last record written, so a tail cut from the files shows as
    truncated, and the anchor: the seq and hash of the last record dropped by
    rotation (``[0, GENESIS]`` while none was; a new trail of a trimmed store
    chain starts from that chain's first record), so records deleted from the
    start show as deleted, not rotated. With the chain's key, the head carries
    an HMAC of both, so it cannot be rewritten without the key. It is replaced
    atomically (temporary file, fsync, ``os.replace``, directory fsync) after
    each batch is on disk, and before rotation drops a file.

Files the sink creates get mode 0o640 (owner writes, the group reads); creating
the file is followed by a directory fsync, so its name survives a power loss.

Use
    Methods block: call them from a worker thread (``trio.to_thread.run_sync``),
    one writer per file at a time. ``write`` refuses records that do not
    continue the chain already in the file; :meth:`JsonlSink.last_record`
    gives the record to continue from.

Error handling
    OS errors and broken continuity raise :class:`AuditSinkError`. Readers
    (:mod:`mas.audit.reader`, ``read_records`` re-exported here) never raise
    on content: a line that does not decode is an
    :class:`~mas.audit.diagnosis.Unreadable` entry naming its file and line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final

import msgspec

from mas.audit.diagnosis import Unreadable
from mas.audit.reader import (
    Head,
    decode_line,
    head_mac,
    head_path,
    read_head_file,
    rotated_files,
)
from mas.audit.reader import read_records as read_records
from mas.audit.record import AuditRecord
from mas.errors import MasError

FILE_MODE: Final = 0o640  # audit files: the owner writes, an auditors' group may read
_TAIL_CHUNK: Final = 65_536  # bytes read at a time when looking for a file's last line

_log = logging.getLogger("mas.audit")


class AuditSinkError(MasError):
    """The audit file could not be written, or a batch does not continue its chain."""


def _tail(file: Path) -> tuple[bytes | None, bytes]:
    """The last complete line of ``file`` (None if none) and the incomplete text after it."""
    with file.open("rb") as f:
        pos = f.seek(0, os.SEEK_END)
        buf = b""
        while True:
            end = buf.rfind(b"\n")
            if end >= 0:
                start = buf.rfind(b"\n", 0, end) + 1
                if start > 0 or pos == 0:
                    return buf[start : end + 1], buf[end + 1 :]
            elif pos == 0:
                return None, buf
            step = min(_TAIL_CHUNK, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open or sync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create(path: Path, flags: int) -> int:
    """Open ``path`` with ``flags``; a file this call creates gets exactly FILE_MODE."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    os.fchmod(fd, FILE_MODE)
    return fd


class JsonlSink:
    """Appends audit records to a JSONL file, rotated by size; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        backup_count: int,
        key: bytes | None = None,
    ) -> None:
        if max_bytes <= 0 or backup_count < 0:
            raise ValueError("max_bytes must be > 0 and backup_count >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._key = key  # seals the head (and its anchor) with the chain's HMAC key
        self._file: BinaryIO | None = None
        self._size = 0
        self._last: tuple[int, str] | None = None
        # (seq, hash) of the last record rotated away or trimmed before the first one
        # in the files; None while unknown (a trail from before anchors, or none yet).
        self._anchor: tuple[int, str] | None = None

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def last_record(self) -> AuditRecord | None:
        """The last complete record in the files (None if there is none or it does not decode)."""
        for file in reversed(rotated_files(self.path)):
            line, _ = _tail(file)
            if line is None:
                continue
            entry = decode_line(line, f"{file} last line")
            if isinstance(entry, Unreadable):
                _log.warning("audit: %s is not a record: %s", entry.where, entry.detail)
                return None
            return entry
        return None

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Append ``records`` (one linked batch), fsync, rotate as needed, update the head.

        Raises AuditSinkError when the batch does not continue the chain in the
        file, or on an OS error; retrying a failed batch writes none of it twice.
        """
        if not records:
            return
        try:
            self._open()
            records = self._unwritten(records)
            self._check_continuity(records)
            if records and self._last is None and self._anchor is None:
                # A new trail starts where the store's chain does (after what it trimmed).
                self._anchor = (records[0].seq - 1, records[0].prev_hash)
            pending: list[bytes] = []
            size = self._size
            for record in records:
                line = msgspec.json.encode(record) + b"\n"
                if self.backup_count and size and size + len(line) > self.max_bytes:
                    self._flush(pending)
                    pending = []
                    self._rotate()
                    size = 0
                pending.append(line)
                size += len(line)
                self._last = (record.seq, record.hash)
            self._flush(pending)
            if not records:
                return
            last = records[-1]
            self._write_head(last.seq, last.hash)
        except OSError as exc:
            self._discard()  # the next write starts again from what is on disk
            raise AuditSinkError(f"cannot write audit file {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the current file (the next write reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # --- internals -------------------------------------------------------------------

    def _discard(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # the write's own error is the one reported
                file.close()

    def _open(self) -> None:
        if self._file is not None:
            return
        self._repair_tail()
        last = self.last_record()
        self._last = None if last is None else (last.seq, last.hash)
        self._anchor = self._find_anchor()
        self._open_current()

    def _find_anchor(self) -> tuple[int, str] | None:
        """The anchor of the trail on disk: from its head, else from a first record at seq 1."""
        try:
            head = read_head_file(self.path)
        except ValueError as exc:
            _log.warning("audit: %s", exc)
            head = None
        if head is not None and head.anchor is not None:
            return head.anchor
        for file in rotated_files(self.path):
            with file.open("rb") as f:
                line = f.readline()
            if not line:
                continue
            first = decode_line(line, f"{file} line 1")
            if isinstance(first, AuditRecord) and first.seq == 1:
                return (0, first.prev_hash)
            _log.warning(
                "audit: %s does not start at record 1 and its head records no anchor (written"
                " before anchors were kept): `mas audit verify` will report the records before"
                " it as deleted",
                file,
            )
            return None
        return None

    def _open_current(self) -> None:
        created = not self.path.exists()
        fd = _create(self.path, os.O_WRONLY | os.O_APPEND)
        self._file = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size
        if created:
            _fsync_dir(self.path.parent)  # the new file's name is durable too

    def _repair_tail(self) -> None:
        """Cut an incomplete last line: a write that a crash interrupted, never acknowledged."""
        if not self.path.is_file():
            return
        _, partial = _tail(self.path)
        if not partial:
            return
        with self.path.open("r+b") as f:
            f.truncate(f.seek(0, os.SEEK_END) - len(partial))
            os.fsync(f.fileno())
        _log.warning(
            "audit: cut an incomplete last line (%d bytes) from %s", len(partial), self.path
        )

    def _unwritten(self, records: Sequence[AuditRecord]) -> Sequence[AuditRecord]:
        """Drop the records of a retried batch that an earlier, failed write put on disk.

        The batch's record with the file's last seq and hash proves (through the
        chain) that it and the records before it are already there.
        """
        for index, record in enumerate(records):
            if self._last == (record.seq, record.hash):
                self._write_head(record.seq, record.hash)
                return records[index + 1 :]
        return records

    def _check_continuity(self, records: Sequence[AuditRecord]) -> None:
        prev = self._last
        for record in records:
            if prev is not None and (record.seq, record.prev_hash) != (prev[0] + 1, prev[1]):
                raise AuditSinkError(
                    f"audit record {record.seq} does not continue the chain in {self.path},"
                    f" which ends at record {prev[0]}: continue the chain from"
                    " JsonlSink.last_record(), or start a new audit file"
                )
            prev = (record.seq, record.hash)

    def _flush(self, lines: list[bytes]) -> None:
        assert self._file is not None
        if not lines:
            return
        data = b"".join(lines)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._size += len(data)

    def _rotate(self) -> None:
        self.close()
        name = self.path.name
        dropped = [  # what lies beyond backup_count, oldest first
            old
            for old in rotated_files(self.path)
            if old.name[len(name) + 1 :].isdigit()
            and int(old.name[len(name) + 1 :]) >= self.backup_count
        ]
        if dropped:
            # The anchor is on disk before any record leaves: a crash in between shows
            # as a trail that still holds its anchor record, never as a deletion.
            self._anchor = self._last_of(dropped[-1])
            assert self._last is not None
            self._write_head(*self._last)
        for old in dropped:
            old.unlink()
        for index in range(self.backup_count - 1, 0, -1):
            src = self.path.with_name(f"{name}.{index}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{name}.1"))
        self._open_current()
        _fsync_dir(self.path.parent)

    def _last_of(self, file: Path) -> tuple[int, str] | None:
        line, _ = _tail(file)
        entry = None if line is None else decode_line(line, f"{file} last line")
        if isinstance(entry, AuditRecord):
            return (entry.seq, entry.hash)
        _log.warning("audit: cannot read the last record of %s before dropping it", file)
        return None

    def _write_head(self, seq: int, hash_: str) -> None:
        target = head_path(self.path)
        tmp = target.with_name(target.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):  # a stale one (or a planted symlink)
            tmp.unlink()
        head = Head(seq=seq, hash=hash_, anchor=self._anchor)
        if self._key is not None:
            head = msgspec.structs.replace(head, mac=head_mac(head, self._key))
        fd = _create(tmp, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(head) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)  # the rename is durable before the next batch
