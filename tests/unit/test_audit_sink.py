"""The JSONL audit sink: lines, fsync'd batches, rotation, the head sidecar, bad lines."""

from __future__ import annotations

import stat
from pathlib import Path

import msgspec
import pytest

from mas.audit import (
    AuditDraft,
    AuditRecord,
    AuditSinkError,
    JsonlSink,
    Unreadable,
    link_many,
    read_records,
    verify,
)
from mas.audit.reader import head_path, read_head, rotated_files
from mas.cli.audit.files import verify_file

T0 = 1_795_510_800.0


def chain(n: int, prev: AuditRecord | None = None) -> list[AuditRecord]:
    drafts = [
        AuditDraft(time=T0 + i, decision="ALLOWED", message_id=f"m{i:04d}", sender_id="ping")
        for i in range(n)
    ]
    return link_many(prev, drafts, None)


def line_bytes(record: AuditRecord) -> int:
    return len(msgspec.json.encode(record)) + 1


def test_writes_one_json_object_per_line_and_a_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = chain(5)
    with JsonlSink(path, max_bytes=1_000_000, backup_count=3) as sink:
        sink.write(records[:2])
        sink.write(records[2:])
        sink.write([])
    lines = path.read_bytes().splitlines()
    assert [msgspec.json.decode(line, type=AuditRecord) for line in lines] == records
    assert list(read_records(path)) == records
    assert read_head(path) == (5, records[-1].hash)
    assert verify(read_records(path), None, expected_head=read_head(path)).ok


def test_files_are_created_with_mode_0o640(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=1_000_000, backup_count=1) as sink:
        sink.write(chain(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(head_path(path).stat().st_mode) == 0o640


def test_rotates_at_max_bytes_keeping_backup_count_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = chain(30)
    max_bytes = 3 * max(map(line_bytes, records))
    with JsonlSink(path, max_bytes=max_bytes, backup_count=2) as sink:
        for start in range(0, 30, 4):
            sink.write(records[start : start + 4])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.1",
        "audit.jsonl.2",
        "audit.jsonl.head",
    ]
    assert all(p.stat().st_size <= max_bytes for p in rotated_files(path))
    kept = list(read_records(path))
    assert kept == records[-len(kept) :]
    assert 3 <= len(kept) < 30


def test_chain_verifies_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = chain(20)
    with JsonlSink(path, max_bytes=2 * max(map(line_bytes, records)), backup_count=50) as sink:
        sink.write(records)  # one batch spread over ten files
    assert len(rotated_files(path)) == 10
    assert list(read_records(path)) == records
    report = verify(read_records(path), None, expected_head=read_head(path))
    assert report.ok and report.first_seq == 1 and report.checked == 20


def test_rotated_away_records_are_a_start_offset_not_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = chain(20)
    with JsonlSink(path, max_bytes=2 * max(map(line_bytes, records)), backup_count=2) as sink:
        sink.write(records)
    first = next(iter(read_records(path)))
    assert isinstance(first, AuditRecord) and first.seq > 1
    status, message = verify_file(path, None)
    assert status == 0, message
    assert f"starts at seq {first.seq}: records 1 to {first.seq - 1} were rotated away" in message


def test_backup_count_zero_never_rotates(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=10, backup_count=0) as sink:
        sink.write(chain(5))
    assert rotated_files(path) == [path]
    assert len(list(read_records(path))) == 5


def test_rotated_files_are_ordered_oldest_first_by_number(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    for name in ("a.jsonl", "a.jsonl.1", "a.jsonl.2", "a.jsonl.10", "a.jsonl.x", "b.jsonl.3"):
        (tmp_path / name).write_text("")
    assert [p.name for p in rotated_files(path)] == [
        "a.jsonl.10",
        "a.jsonl.2",
        "a.jsonl.1",
        "a.jsonl",
    ]


def test_head_sidecar_detects_a_truncated_tail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=1_000_000, backup_count=1) as sink:
        sink.write(chain(10))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:8]))
    status, message = verify_file(path, None)
    assert status == 1
    assert "truncated" in message and "seq 9" in message


def test_malformed_line_is_reported_as_edited_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=1_000_000, backup_count=1) as sink:
        sink.write(chain(6))
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = b'{"time": "yesterday"}\n'
    path.write_bytes(b"".join(lines))
    entries = list(read_records(path))
    bad = entries[3]
    assert isinstance(bad, Unreadable) and bad.where == f"{path} line 4"
    status, message = verify_file(path, None)
    assert status == 1
    assert "(edited) at seq 4" in message and "line 4" in message


def test_incomplete_last_line_is_reported_by_readers(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=1_000_000, backup_count=1) as sink:
        sink.write(chain(2))
    with path.open("ab") as f:
        f.write(b'{"time": 1')
    last = list(read_records(path))[-1]
    assert isinstance(last, Unreadable) and "incomplete" in last.detail


def test_reopened_sink_cuts_an_interrupted_write_and_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = chain(3)
    with JsonlSink(path, max_bytes=1_000_000, backup_count=1) as sink:
        sink.write(first)
    with path.open("ab") as f:
        f.write(b'{"time": 1')  # a crash in the middle of a write
    sink = JsonlSink(path, max_bytes=1_000_000, backup_count=1)
    assert sink.last_record() == first[-1]
    more = chain(2, prev=sink.last_record())
    with sink:
        sink.write(more)
    assert list(read_records(path)) == [*first, *more]
    assert verify_file(path, None)[0] == 0


def test_write_refuses_records_that_do_not_continue_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=1_000_000, backup_count=1) as sink:
        sink.write(chain(3))
    with JsonlSink(path, max_bytes=1_000_000, backup_count=1) as sink:
        with pytest.raises(AuditSinkError, match="does not continue the chain"):
            sink.write(chain(2))  # a new chain from seq 1
        records = chain(2)
        with pytest.raises(AuditSinkError, match="does not continue"):
            sink.write([records[1], records[0]])
    assert len(list(read_records(path))) == 3


def test_os_errors_become_audit_sink_errors(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "missing" / "audit.jsonl", max_bytes=100, backup_count=1)
    with pytest.raises(AuditSinkError, match="cannot write audit file"):
        sink.write(chain(1))


def test_sink_refuses_nonsense_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        JsonlSink(tmp_path / "a", max_bytes=0, backup_count=1)


def test_last_record_is_found_when_read_back_in_small_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mas.audit.sink._TAIL_CHUNK", 7)
    path = tmp_path / "audit.jsonl"
    records = chain(4)
    with JsonlSink(path, max_bytes=1_000_000, backup_count=1) as sink:
        sink.write(records)
        assert sink.last_record() == records[-1]
    with path.open("ab") as f:
        f.write(b'{"partial": ')
    assert JsonlSink(path, max_bytes=1_000_000, backup_count=1).last_record() == records[-1]


def test_last_record_is_none_when_the_last_line_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"not json\n")
    assert JsonlSink(path, max_bytes=1_000, backup_count=1).last_record() is None


def test_failed_write_is_reported_and_the_next_write_resumes_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    records = chain(4)
    sink = JsonlSink(path, max_bytes=1_000_000, backup_count=1)
    sink.write(records[:2])

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mas.audit.sink.os.fsync", broken_fsync)
    with pytest.raises(AuditSinkError, match="No space left"):
        sink.write(records[2:])
    monkeypatch.undo()
    assert read_head(path) == (2, records[1].hash)  # the head never runs ahead of the data
    sink.write(records[1:])  # a retry; the lines of the failed write did land
    sink.close()
    assert list(read_records(path)) == records
    assert read_head(path) == (4, records[3].hash)


def test_rotation_leaves_files_that_only_share_the_name_prefix(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    neighbours = ["audit.jsonl.bak", "audit.jsonl.01", "audit.jsonl.1.old", "audit.jsonlx"]
    for name in neighbours:
        (tmp_path / name).write_text("keep me\n")
    (tmp_path / "audit.jsonl.9").mkdir()  # a directory named like a backup
    (tmp_path / "audit.jsonl.logs").mkdir()
    records = chain(30)
    with JsonlSink(path, max_bytes=2 * max(map(line_bytes, records)), backup_count=1) as sink:
        for start in range(0, 30, 3):
            sink.write(records[start : start + 3])
    for name in neighbours:
        assert (tmp_path / name).read_text() == "keep me\n"
    assert (tmp_path / "audit.jsonl.9").is_dir()
    assert (tmp_path / "audit.jsonl.logs").is_dir()
    assert [p.name for p in rotated_files(path)] == ["audit.jsonl.1", "audit.jsonl"]


# --- anchors: rotation is told from deletion -------------------------------------------------


KEY = b"an audit key of 32 bytes, really"


def test_deleting_the_first_records_with_rotation_off_is_a_deletion(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=10, backup_count=0) as sink:
        sink.write(chain(6))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[2:]))
    status, message = verify_file(path, None)
    assert status == 1, message
    assert "TAMPERED (deleted)" in message
    assert "records 1 to 2 are missing (deleted, not rotated)" in message


def _rotated_trail(path: Path, n: int = 20, key: bytes | None = None) -> list[AuditRecord]:
    records = link_many(None, chain(n), key) if key else chain(n)
    with JsonlSink(
        path, max_bytes=2 * max(map(line_bytes, records)), backup_count=2, key=key
    ) as sink:
        sink.write(records)
    return records


def test_deleting_the_oldest_records_after_rotation_is_a_deletion(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _rotated_trail(path)
    oldest = rotated_files(path)[0]
    first = next(iter(read_records(path)))
    assert isinstance(first, AuditRecord)
    oldest.write_bytes(b"".join(oldest.read_bytes().splitlines(keepends=True)[1:]))
    status, message = verify_file(path, None)
    assert status == 1, message
    assert f"TAMPERED (deleted) at seq {first.seq}" in message
    assert f"records up to {first.seq - 1} were rotated away" in message
    assert f"record {first.seq} is missing (deleted, not rotated)" in message


def test_deleting_the_oldest_rotated_file_is_a_deletion(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _rotated_trail(path)
    rotated_files(path)[0].unlink()
    status, message = verify_file(path, None)
    assert status == 1, message
    assert "TAMPERED (deleted)" in message and "(deleted, not rotated)" in message


def test_the_anchor_is_written_before_a_rotated_file_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash right after the head names the new anchor, before the file goes: the trail
    # still holds the anchor's record, which is sound, not tampering.
    path = tmp_path / "audit.jsonl"
    records = chain(20)
    sink = JsonlSink(path, max_bytes=2 * max(map(line_bytes, records)), backup_count=2)
    sink.write(records[:6])

    def crash(self: Path) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(AuditSinkError):
        sink.write(records[6:])
    monkeypatch.undo()
    status, message = verify_file(path, None)
    assert status == 0, message


def test_a_sealed_head_cannot_be_rewritten_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _rotated_trail(path, key=KEY)
    assert verify_file(path, KEY)[0] == 0
    oldest = rotated_files(path)[0]
    lines = oldest.read_bytes().splitlines(keepends=True)
    oldest.write_bytes(b"".join(lines[1:]))
    second = msgspec.json.decode(lines[1], type=AuditRecord)
    head = msgspec.json.decode(head_path(path).read_bytes())
    head["anchor"] = [second.seq - 1, second.prev_hash]  # hide the deletion
    head_path(path).write_bytes(msgspec.json.encode(head))
    status, message = verify_file(path, KEY)
    assert status == 1, message
    assert "does not carry the chain's HMAC seal" in message


def test_a_head_from_before_anchors_still_verifies_a_trail_from_seq_1(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = chain(5)
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))
    head_path(path).write_text(f'{{"seq":5,"hash":"{records[-1].hash}"}}\n')
    assert verify_file(path, None)[0] == 0
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records[2:]))
    status, message = verify_file(path, None)
    assert status == 1 and "TAMPERED (deleted)" in message
    assert "before anchors were kept" in message


def test_a_sink_continuing_an_old_trail_keeps_its_seq_1_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = chain(5)
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records[:3]))
    head_path(path).write_text(f'{{"seq":3,"hash":"{records[2].hash}"}}\n')
    with JsonlSink(path, max_bytes=1_000_000, backup_count=2) as sink:
        sink.write(records[3:])
    assert msgspec.json.decode(head_path(path).read_bytes())["anchor"] == [0, "0" * 64]
    assert verify_file(path, None)[0] == 0


def test_a_new_trail_of_a_trimmed_chain_starts_at_its_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = chain(8)
    with JsonlSink(path, max_bytes=1_000_000, backup_count=2) as sink:
        sink.write(records[3:])  # the store trimmed records 1 to 3
    status, message = verify_file(path, None)
    assert status == 0, message
    assert "records 1 to 3 were rotated away or trimmed" in message


def test_creating_the_file_and_renaming_the_head_sync_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from mas.audit import sink as sink_module

    events: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(sink_module, "_fsync_dir", lambda d: events.append(f"fsync {d}"))
    monkeypatch.setattr(
        sink_module.os,
        "replace",
        lambda a, b: (events.append(f"replace {Path(b).name}"), real_replace(a, b))[1],
    )
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=1_000_000, backup_count=2) as sink:
        sink.write(chain(2))
    assert events == [f"fsync {tmp_path}", "replace audit.jsonl.head", f"fsync {tmp_path}"]


def test_a_keyed_trail_cut_short_with_its_head_replaced_unsealed_is_not_proven(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    records = link_many(None, chain(6), KEY)
    with JsonlSink(path, max_bytes=1_000_000, backup_count=0, key=KEY) as sink:
        sink.write(records)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:4]))
    head_path(path).write_text(f'{{"seq":4,"hash":"{records[3].hash}","anchor":[0,"{"0" * 64}"]}}')
    status, message = verify_file(path, KEY)
    assert status == 1 and "NOT PROVEN" in message and "not sealed" in message
    head_path(path).unlink()
    status, message = verify_file(path, KEY)
    assert status == 1 and "there is no head file" in message
