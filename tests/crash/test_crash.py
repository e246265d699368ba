"""Crash tests with real processes: kill -9 a server mid-stream, restart it, lose nothing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from processes import agent_env, free_port, mas_process, wait_for

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return agent_env(HERE)


@contextmanager
def _process(*args: str, cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with mas_process(*args, cwd=cwd, log=log, path=(HERE,)) as process:
        yield process


_free_port = free_port
_wait_for = wait_for


def _accepted(log: Path) -> set[int]:
    if not log.exists():
        return set()
    return {
        int(line.split()[1])
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith("accepted ")
    }


def _recorded(db: Path) -> set[int]:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT key FROM state WHERE agent_id = 'recorder'").fetchall()
    except sqlite3.Error:
        return set()
    finally:
        conn.close()
    return {int(key[1:]) for (key,) in rows}


def _project(tmp_path: Path, *, port: int, store: str, count: int, gateway: str = "") -> None:
    """mas.yaml for a sender and a recorder with real TLS files (written by `mas certs`)."""
    (tmp_path / "mas.yaml").write_text(
        f"server_listen_addr: 127.0.0.1:{port}\n"
        "tls_ca_path: certs/ca.pem\ntls_server_cert_path: certs/server.pem\n"
        "tls_server_key_path: certs/server.key\n"
        f"store: {{backend: {store}}}\n"
        f"gateway:\n{gateway}  rate_limit: {{per_minute: 100000, per_hour: 1000000}}\n"
        "permissions: [{type: allow, sender: sender, targets: [recorder]}]\n"
        "agents:\n"
        "  - {agent_id: sender, class_path: 'crash_agents:Sender',"
        f" init_kwargs: {{count: {count}}},"
        " tls_cert_path: certs/sender.pem, tls_key_path: certs/sender.key}\n"
        "  - {agent_id: recorder, class_path: 'crash_agents:Recorder',"
        " tls_cert_path: certs/recorder.pem, tls_key_path: certs/recorder.key}\n"
    )
    certs = subprocess.run(
        [sys.executable, "-m", "mas", "certs", str(tmp_path)],
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert certs.returncode == 0, certs.stderr


def test_killed_sqlite_server_loses_no_accepted_message(tmp_path: Path) -> None:
    port = _free_port()
    count = 400
    _project(
        tmp_path,
        port=port,
        store="sqlite",
        count=count,
        gateway="  audit: {file_path: audit.jsonl}\n",
    )
    db = tmp_path / "mas.sqlite3"
    server_log, sender_log, recorder_log = (
        tmp_path / n for n in ("server.log", "sender.log", "recorder.log")
    )
    with _process("serve", str(tmp_path), cwd=tmp_path, log=server_log) as first:
        _wait_for(
            lambda: "listening on" in server_log.read_text(errors="replace"), 30, "the server"
        )
        with (
            _process(
                "agent", "recorder", str(tmp_path), cwd=tmp_path, log=recorder_log
            ) as recorder,
            _process("agent", "sender", str(tmp_path), cwd=tmp_path, log=sender_log) as sender,
        ):
            _wait_for(
                lambda: len(_accepted(sender_log)) >= count // 4, 60, "a quarter of the sends"
            )
            first.send_signal(signal.SIGKILL)  # mid-stream, with messages in flight
            first.wait(timeout=30)
            with _process("serve", str(tmp_path), cwd=tmp_path, log=server_log):
                assert sender.wait(timeout=120) == 0, sender_log.read_text(errors="replace")[-3000:]
                accepted = _accepted(sender_log)
                assert accepted == set(range(count))
                _wait_for(lambda: accepted <= _recorded(db), 60, "every accepted number recorded")
                recorder.send_signal(signal.SIGTERM)
                assert recorder.wait(timeout=30) == 0
    verify = subprocess.run(
        [sys.executable, "-m", "mas", "audit", "verify", str(tmp_path / "audit.jsonl")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_server_survives_an_agent_process_killed_mid_stream(tmp_path: Path) -> None:
    port = _free_port()
    count = 600
    _project(tmp_path, port=port, store="memory", count=count)
    server_log, sender_log, recorder_log = (
        tmp_path / n for n in ("server.log", "sender.log", "recorder.log")
    )
    with _process("serve", str(tmp_path), cwd=tmp_path, log=server_log) as server:
        _wait_for(
            lambda: "listening on" in server_log.read_text(errors="replace"), 30, "the server"
        )
        with (
            _process(
                "agent", "recorder", str(tmp_path), cwd=tmp_path, log=recorder_log
            ) as recorder,
            _process("agent", "sender", str(tmp_path), cwd=tmp_path, log=sender_log) as sender,
        ):
            _wait_for(
                lambda: len(_accepted(sender_log)) >= count // 4, 60, "a quarter of the sends"
            )
            recorder.send_signal(signal.SIGKILL)  # the server is writing deliveries to it
            assert sender.wait(timeout=120) == 0, sender_log.read_text(errors="replace")[-3000:]
        assert server.poll() is None, server_log.read_text(errors="replace")[-3000:]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
