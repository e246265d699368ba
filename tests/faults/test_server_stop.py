"""SIGSTOP of a server under load, then SIGCONT: nothing lost, the agents recover alone.

Real processes: ``mas serve`` (SQLite, ``sync: full``), two sender instances
and a recorder in their own ``mas agent`` processes. The server is frozen with
SIGSTOP while sends and deliveries are in flight (its sockets stay open, so
the agents see a server that does not answer: their sends time out after
``rpc_timeout`` and are sent again). After SIGCONT the agents must go on by
themselves, every accepted message must be delivered, and the server must
still be up. Short form: 5 s; ``--long-faults``: 20 s (issue 19's figure).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from fault_harness import (
    HERE,
    AgentSpec,
    agent_process,
    certify,
    drain,
    long_faults,
    recovered_after,
    report,
    tail,
    wait_accepted,
    write_project,
)
from processes import ServerProcess, free_port

pytestmark = pytest.mark.slow


def test_stopped_server_loses_nothing_and_agents_recover(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    frozen = 20.0 if long_faults(request.config) else 5.0
    count = 600  # per sender instance
    sender = {"targets": ["recorder"], "count": count, "rpc_timeout": 3.0}
    write_project(
        tmp_path,
        port=free_port(),
        store="{backend: sqlite}",
        agents=[
            AgentSpec("sender", "Sender", sender, instances=2),
            AgentSpec("recorder", "Recorder"),
        ],
        permissions=[{"type": "allow", "sender": "sender", "targets": ["recorder"]}],
    )
    certify(tmp_path)
    server_log, sender_log, recorder_log = (
        tmp_path / f"{name}.log" for name in ("server", "sender", "recorder")
    )
    with ServerProcess(tmp_path, server_log, path=(HERE,)) as server:
        with (
            agent_process("recorder", tmp_path, recorder_log) as recorder,
            agent_process("sender", tmp_path, sender_log) as senders,
        ):
            wait_accepted([sender_log], count // 2, 120, "sends before the stop")
            server.signal(signal.SIGSTOP)
            try:
                time.sleep(frozen)
            finally:
                server.signal(signal.SIGCONT)
            resumed = time.time()
            recovery = recovered_after([sender_log], resumed, 60, "a send accepted after SIGCONT")
            assert senders.wait(timeout=180) == 0, tail(sender_log)
            tally = drain([sender_log], [recorder_log])
            report(
                f"sqlite server SIGSTOP {frozen:g}s",
                **tally.figures(),
                recover_seconds=round(recovery, 2),
            )
            assert not tally.lost, f"{len(tally.lost)} accepted messages never delivered"
            assert len(tally.accepted) >= 2 * count
            assert recorder.poll() is None, tail(recorder_log)
        assert server.alive(), tail(server_log)
        assert server.terminate() == 0, tail(server_log)
