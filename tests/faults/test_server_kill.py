"""kill -9 of a SQLite server under load, again and again: nothing accepted is lost.

Real processes: ``mas serve`` on a SQLite store (``sync: full`` and ``sync:
normal``), a sender (4 concurrent sends) and a recorder in their own
``mas agent`` processes. The server is killed with SIGKILL while sends and
deliveries are in flight, restarted on the same port and file, and the agents
reconnect by themselves. Every message id the sender saw accepted must reach
the recorder; duplicates are counted and reported. The audit file's chain
must verify afterwards. Short form: 3 kills; ``--long-faults``: 10.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_harness import (
    HERE,
    PER_ROUND,
    AgentSpec,
    agent_process,
    certify,
    drain,
    kill_loop,
    long_faults,
    report,
    tail,
    verify_audit,
    write_project,
)
from processes import ServerProcess, free_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sqlite_server_killed_repeatedly_loses_nothing(
    tmp_path: Path, sync: str, request: pytest.FixtureRequest
) -> None:
    kills = 10 if long_faults(request.config) else 3
    stop = tmp_path / "stop-sending"
    write_project(
        tmp_path,
        port=free_port(),
        store=f"{{backend: sqlite, sync: {sync}}}",
        agents=[
            AgentSpec("sender", "Sender", {"targets": ["recorder"], "stop_file": str(stop)}),
            AgentSpec("recorder", "Recorder"),
        ],
        permissions=[{"type": "allow", "sender": "sender", "targets": ["recorder"]}],
        gateway={"audit": {"file_path": "audit.jsonl"}},
    )
    certify(tmp_path)
    server_log, sender_log, recorder_log = (
        tmp_path / f"{name}.log" for name in ("server", "sender", "recorder")
    )
    with ServerProcess(tmp_path, server_log, path=(HERE,)) as server:
        with (
            agent_process("recorder", tmp_path, recorder_log) as recorder,
            agent_process("sender", tmp_path, sender_log) as sender,
        ):
            recoveries = kill_loop([server], kills, sender_log, recorder_log)
            stop.touch()
            assert sender.wait(timeout=60) == 0, tail(sender_log)
            tally = drain([sender_log], [recorder_log])
            report(f"sqlite kill -9 x{kills} (sync: {sync})", **tally.figures(), recover=recoveries)
            assert not tally.lost, f"{len(tally.lost)} accepted messages never delivered"
            assert len(tally.accepted) >= PER_ROUND * (kills + 1)
            assert recorder.poll() is None, tail(recorder_log)
        assert server.terminate() == 0, tail(server_log)
    verify_audit(tmp_path / "audit.jsonl")
