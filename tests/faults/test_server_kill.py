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

import time
from pathlib import Path

import pytest
from harness import (
    HERE,
    AgentSpec,
    Tally,
    agent_command,
    certify,
    drain,
    long_faults,
    recovered_after,
    report,
    tail,
    verify_audit,
    wait_accepted,
    write_project,
)
from processes import ServerProcess, free_port, mas_process

pytestmark = pytest.mark.slow

PER_ROUND = 150  # sends accepted between two kills


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sqlite_server_killed_repeatedly_loses_nothing(
    tmp_path: Path, sync: str, request: pytest.FixtureRequest
) -> None:
    kills = 10 if long_faults(request.config) else 3
    count = PER_ROUND * (kills + 1)
    write_project(
        tmp_path,
        port=free_port(),
        store=f"{{backend: sqlite, sync: {sync}}}",
        agents=[
            AgentSpec("sender", "Sender", {"targets": ["recorder"], "count": count}),
            AgentSpec("recorder", "Recorder"),
        ],
        permissions=[{"type": "allow", "sender": "sender", "targets": ["recorder"]}],
        gateway={"audit": {"file_path": "audit.jsonl"}},
    )
    certify(tmp_path)
    server_log, sender_log, recorder_log = (
        tmp_path / f"{name}.log" for name in ("server", "sender", "recorder")
    )
    recoveries: list[float] = []
    with ServerProcess(tmp_path, server_log, path=(HERE,)) as server:
        with (
            mas_process(
                *agent_command("recorder", tmp_path), cwd=tmp_path, log=recorder_log, path=(HERE,)
            ) as recorder,
            mas_process(
                *agent_command("sender", tmp_path), cwd=tmp_path, log=sender_log, path=(HERE,)
            ) as sender,
        ):
            for kill in range(1, kills + 1):
                wait_accepted([sender_log], PER_ROUND * kill, 120, f"the sends before kill {kill}")
                server.kill()  # mid-stream: sends, deliveries and acks in flight
                killed = time.time()
                server.start()
                recoveries.append(
                    recovered_after([sender_log], killed, 60, f"a send accepted after kill {kill}")
                )
            assert sender.wait(timeout=180) == 0, tail(sender_log)
            tally = drain([sender_log], [recorder_log])
            report(
                f"sqlite kill -9 x{kills} (sync: {sync})",
                **tally.figures(),
                recover_seconds=[round(r, 2) for r in recoveries],
            )
            assert not tally.lost, f"{len(tally.lost)} accepted messages never delivered"
            assert len(tally.accepted) >= count
            assert recorder.poll() is None, tail(recorder_log)
        assert server.terminate() == 0, tail(server_log)
    verify_audit(tmp_path / "audit.jsonl")
    assert Tally.read(recorder_log).deliveries  # the recorder's log was read at all
