"""Reading the JSONL audit files: rotated files in order, lines as entries, the head.

Every function here only reads. Bad content never raises: a line that does
not decode becomes an :class:`~mas.audit.diagnosis.Unreadable` entry that
names its file and line (verification reports it as edited). OS errors
(a file that cannot be opened) propagate as OSError for the caller to word.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import msgspec

from mas.audit.diagnosis import Unreadable
from mas.audit.record import AuditRecord

HEAD_SUFFIX: Final = ".head"  # sidecar holding the last (seq, hash) written

_DECODER: Final = msgspec.json.Decoder(AuditRecord)


class Head(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The sidecar's content: seq and hash of the last record written, and the anchor.

    ``anchor`` is the (seq, hash) of the last record rotated away or trimmed
    before the trail's first record (``[0, GENESIS]`` when none was): a trail
    that starts later than right after it had records deleted. None in a head
    written before anchors were kept, or when the writer could not know it.
    ``mac`` is :func:`head_mac` with the chain's HMAC key ("" for an unkeyed
    chain), so that neither the head nor the anchor can be rewritten without
    the key.
    """

    seq: int
    hash: str
    anchor: tuple[int, str] | None = None
    mac: str = ""


_HEAD_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def head_mac(head: Head, key: bytes) -> str:
    """HMAC-SHA256 of the head's fields other than ``mac`` (sorted compact JSON), in hex."""
    fields = msgspec.to_builtins(msgspec.structs.replace(head, mac=""))
    return hmac.new(key, b"mas audit head\n" + _HEAD_ENCODER.encode(fields), "sha256").hexdigest()


def head_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar file holding the head of the audit file at ``path``."""
    return Path(f"{os.fspath(path)}{HEAD_SUFFIX}")


def read_head(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """(seq, hash) from the sidecar of ``path``; None when there is none.

    Raises ValueError when the sidecar does not decode, OSError when unreadable.
    """
    head = read_head_file(path)
    return None if head is None else (head.seq, head.hash)


def read_head_file(path: str | os.PathLike[str]) -> Head | None:
    """The sidecar of ``path`` as a :class:`Head`; None when there is none.

    Raises ValueError when the sidecar does not decode, OSError when unreadable.
    """
    try:
        data = head_path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(data, type=Head)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{head_path(path)} is not a valid head file: {exc}") from None


def rotated_files(path: str | os.PathLike[str]) -> list[Path]:
    """The existing files of the audit trail at ``path``, oldest first."""
    base = Path(path)
    pattern = re.compile(re.escape(base.name) + r"\.([1-9][0-9]*)")
    numbered: list[tuple[int, Path]] = []
    if base.parent.is_dir():
        for child in base.parent.iterdir():
            match = pattern.fullmatch(child.name)
            if match and child.is_file():
                numbered.append((int(match.group(1)), child))
    files = [p for _, p in sorted(numbered, reverse=True)]
    return [*files, base] if base.is_file() else files


def decode_line(line: bytes, where: str) -> AuditRecord | Unreadable:
    """One line of an audit file (with its line end, if any) as a record or Unreadable."""
    if not line.endswith(b"\n"):
        return Unreadable(where, "the line is incomplete (no line end): the write was cut short")
    body = line[:-1]
    if not body.strip():
        return Unreadable(where, "the line is empty")
    try:
        return _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        return Unreadable(where, str(exc))


def iter_entries(files: Sequence[Path]) -> Iterator[tuple[Path, int, AuditRecord | Unreadable]]:
    """(file, line number, entry) for every line of ``files``, in order.

    Raises OSError when a file cannot be read.
    """
    for file in files:
        with file.open("rb") as f:
            for number, line in enumerate(f, start=1):
                yield file, number, decode_line(line, f"{file} line {number}")


def read_records(path: str | os.PathLike[str]) -> Iterator[AuditRecord | Unreadable]:
    """Every entry of the audit trail at ``path``, across its rotated files, oldest first."""
    for _, _, entry in iter_entries(rotated_files(path)):
        yield entry
