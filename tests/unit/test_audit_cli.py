"""``mas audit verify | tail | export`` functions on JSONL sink files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import msgspec
import pytest

from mas.audit import AuditDraft, AuditRecord, JsonlSink, Violation, link_many
from mas.audit.export import CSV_COLUMNS, export, format_tail_line, iso_time, parse_time
from mas.audit.reader import head_path
from mas.cli.audit.files import export_file, tail_file, verify_file

KEY = b"an audit key of 32 bytes, really"
T0 = 1_795_510_800.123  # 2026-11-24T09:00:00.123Z


def drafts(n: int, start: int = 0) -> list[AuditDraft]:
    senders = ["ping", "pong", "nurse"]
    decisions = ["ALLOWED", "AUTHZ_DENIED", "DLP_REDACTED", "DELIVERED"]
    return [
        AuditDraft(
            time=T0 + i,
            decision=decisions[i % 4],  # type: ignore[arg-type]
            message_id=f"m{i}",
            sender_id=senders[i % 3],
            sender_instance_id="abc",
            target_id="pong" if senders[i % 3] != "pong" else "ping",
            message_type="patient_message",
            correlation_id=f"c{i}",
            violations=(Violation("ssn-1", "ssn", "redact", "high", "$.ssn"),)
            if decisions[i % 4] == "DLP_REDACTED"
            else (),
        )
        for i in range(start, start + n)
    ]


def write_trail(path: Path, n: int = 12, key: bytes | None = None) -> list[AuditRecord]:
    records = link_many(None, drafts(n), key)
    with JsonlSink(path, max_bytes=1_000_000, backup_count=2, key=key) as sink:
        sink.write(records)
    return records


# --- verify --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
def test_verify_ok(tmp_path: Path, key: bytes | None) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, key=key)
    status, message = verify_file(path, key)
    assert status == 0
    assert message.startswith("audit trail OK: 12 records, seq 1 to 12, in 1 file(s)")
    assert ("HMAC-SHA256 keyed" if key else "unkeyed SHA-256") in message


def test_verify_missing_file_is_status_2(tmp_path: Path) -> None:
    status, message = verify_file(tmp_path / "nope.jsonl", None)
    assert status == 2 and "does not exist" in message


def test_verify_unreadable_head_is_status_2(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path)
    head_path(path).unlink()
    head_path(path).mkdir()
    status, message = verify_file(path, None)
    assert status == 2 and "cannot read" in message


def test_verify_tampered_names_kind_seq_and_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path)
    lines = path.read_bytes().splitlines(keepends=True)
    del lines[4]
    path.write_bytes(b"".join(lines))
    status, message = verify_file(path, None)
    assert status == 1
    assert message.startswith("audit trail TAMPERED (deleted) at seq 5")
    assert f"{path} line 5" in message
    assert "The 4 record(s) before it are sound." in message


def test_verify_with_the_wrong_key_says_so(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, key=KEY)
    status, message = verify_file(path, b"not the key, not the key at all")
    assert status == 1
    assert "(edited) at seq 1" in message and "HMAC key is not the one" in message


def test_verify_malformed_head_is_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path)
    head_path(path).write_text("{not json")
    status, message = verify_file(path, None)
    assert status == 1 and "not a valid head file" in message


def test_verify_without_a_head_warns_that_a_cut_tail_is_invisible(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path)
    head_path(path).unlink()
    status, message = verify_file(path, None)
    assert status == 0 and "no head file" in message


def test_verify_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    assert verify_file(path, None) == (
        0,
        "audit trail OK: no records (unkeyed SHA-256: this proves only that nothing was"
        " corrupted by accident); there is no head file, so records"
        " cut from the end would go unnoticed",
    )


# --- tail ----------------------------------------------------------------------------------


def tail(path: Path, **kw: object) -> tuple[int, str, list[str]]:
    out = io.StringIO()
    options: dict[str, object] = {"follow": False, "as_json": False, "decision": None}
    options |= {"agent": None} | kw
    status, message = tail_file(path, out=out, **options)  # type: ignore[arg-type]
    return status, message, out.getvalue().splitlines()


def test_tail_line_format() -> None:
    record = link_many(None, drafts(1), None)[0]
    assert format_tail_line(record) == (
        "2026-11-24T09:00:00.123Z ALLOWED ping/abc -> pong patient_message msg=m0 corr=c0"
    )
    denied = msgspec.structs.replace(
        record, decision="DLP_BLOCKED", reason="dlp_blocked", sender_instance_id=""
    )
    denied = msgspec.structs.replace(
        denied, violations=(Violation("ssn-1", "ssn", "block", "high", "$.x"),)
    )
    assert format_tail_line(denied).endswith(
        "DLP_BLOCKED ping -> pong patient_message msg=m0 corr=c0"
        " reason=dlp_blocked violations=ssn-1"
    )


def test_tail_escapes_control_characters() -> None:
    record = link_many(
        None, [AuditDraft(time=T0, decision="INVALID", message_type="x\x1b[2J")], None
    )
    line = format_tail_line(record[0])
    assert "\x1b" not in line and "x\\x1b[2J" in line


def test_tail_prints_every_record_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_trail(path)
    status, message, lines = tail(path)
    assert (status, message) == (0, "")
    assert lines == [format_tail_line(r) for r in records]
    assert tail(path, last=3)[2] == lines[-3:]


def test_tail_filters_by_decision_and_agent(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_trail(path)
    _, _, lines = tail(path, decision="authz_denied")
    assert lines == [format_tail_line(r) for r in records if r.decision == "AUTHZ_DENIED"]
    assert lines
    _, _, lines = tail(path, agent="nurse")
    expected = [r for r in records if "nurse" in (r.sender_id, r.target_id)]
    assert lines == [format_tail_line(r) for r in expected] and expected
    _, _, lines = tail(path, agent="ping", decision="DELIVERED")
    assert all(" DELIVERED " in line and "ping" in line for line in lines) and lines


def test_tail_json_lines_are_the_stored_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_trail(path)
    _, _, lines = tail(path, as_json=True)
    assert [msgspec.json.decode(line, type=AuditRecord) for line in lines] == records


def test_tail_reports_unreadable_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path)
    with path.open("ab") as f:
        f.write(b"garbage\n")
    status, message, lines = tail(path)
    assert status == 1 and f"{path} line 13" in message and len(lines) == 12


def test_tail_missing_file_is_status_2(tmp_path: Path) -> None:
    assert tail(tmp_path / "nope")[0] == 2


def test_tail_follow_prints_new_records_across_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    records = link_many(None, drafts(12), None)
    line_max = max(len(msgspec.json.encode(r)) + 1 for r in records)
    sink = JsonlSink(path, max_bytes=4 * line_max, backup_count=3)
    sink.write(records[:2])
    batches = iter([records[2:5], [], records[5:12]])  # the last batch rotates twice

    def sleep(seconds: float) -> None:
        assert seconds == 0.25
        sink.write(next(batches))

    monkeypatch.setattr("mas.cli.audit.files.time.sleep", sleep)
    status, _, lines = tail(path, follow=True, as_json=True, poll_interval=0.25, max_polls=3)
    sink.close()
    assert status == 0
    assert [msgspec.json.decode(line, type=AuditRecord) for line in lines] == records


def test_tail_follow_waits_for_a_line_to_be_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    records = link_many(None, drafts(2), None)
    second = msgspec.json.encode(records[1]) + b"\n"
    path.write_bytes(msgspec.json.encode(records[0]) + b"\n" + second[:10])
    rest = iter([second[10:]])

    def sleep(seconds: float) -> None:
        with path.open("ab") as f:
            f.write(next(rest))

    monkeypatch.setattr("mas.cli.audit.files.time.sleep", sleep)
    status, _, lines = tail(path, follow=True, as_json=True, max_polls=1)
    assert status == 0 and len(lines) == 2


# --- export --------------------------------------------------------------------------------


def test_export_csv_with_a_time_window(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_trail(path)
    out = io.StringIO()
    status, message = export_file(path, "csv", T0 + 2, T0 + 6, out)
    assert (status, message) == (0, f"exported 4 record(s) from {path}")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [int(row["seq"]) for row in rows] == [3, 4, 5, 6]
    assert rows[0]["time_iso"] == "2026-11-24T09:00:02.123Z"
    by_seq = {r.seq: r for r in records}
    for row in rows:
        expected = by_seq[int(row["seq"])]
        assert json.loads(row["violations"]) == list(msgspec.to_builtins(expected.violations))
        assert row["hash"] == expected.hash and float(row["time"]) == expected.time


def test_export_csv_defuses_spreadsheet_formulas(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    record = link_many(None, [AuditDraft(time=T0, decision="INVALID", reason="=1+1")], None)
    with JsonlSink(path, max_bytes=1_000_000, backup_count=0) as sink:
        sink.write(record)
    out = io.StringIO()
    export_file(path, "csv", None, None, out)
    assert next(csv.DictReader(io.StringIO(out.getvalue())))["reason"] == "'=1+1"


def test_export_json_is_an_array_of_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_trail(path)
    out = io.StringIO()
    assert export_file(path, "json", None, T0 + 3, out)[0] == 0
    exported = msgspec.json.decode(out.getvalue(), type=list[AuditRecord])
    assert exported == records[:3]
    out = io.StringIO()
    export_file(path, "json", T0 + 100, None, out)
    assert json.loads(out.getvalue()) == []


def test_export_skips_and_reports_unreadable_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, n=3)
    with path.open("ab") as f:
        f.write(b"{}\n")
    out = io.StringIO()
    status, message = export_file(path, "json", None, None, out)
    assert status == 1 and "1 unreadable line(s)" in message and f"{path} line 4" in message
    assert len(json.loads(out.getvalue())) == 3


def test_export_missing_file_is_status_2(tmp_path: Path) -> None:
    assert export_file(tmp_path / "nope", "csv", None, None, io.StringIO())[0] == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1795510800.5", 1_795_510_800.5),
        ("2026-11-24T09:00:00Z", 1_795_510_800.0),
        ("2026-11-24T10:00:00+01:00", 1_795_510_800.0),
        ("2026-11-24T09:00:00", 1_795_510_800.0),
    ],
)
def test_parse_time_accepts_epoch_seconds_and_iso_8601(text: str, seconds: float) -> None:
    assert parse_time(text) == seconds


def test_parse_time_refuses_anything_else() -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


def test_unknown_export_format_and_unrepresentable_times() -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        export([], "xml", io.StringIO())  # type: ignore[arg-type]
    assert iso_time(1e300) == "1e+300"
