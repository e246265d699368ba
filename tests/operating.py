"""A project under steady load, for the operating tests (status, top, metrics, probes).

::

    write_load_project(tmp_path, store="sqlite")      # mas.yaml + load_agents.py
    with mas_process("run", str(tmp_path), cwd=tmp_path, log=log):
        wait_for(lambda: "listening on" in read(log), 60, "the server")
        snapshot = status_json(tmp_path)               # `mas status --json`, parsed

``Sender`` sends ``count`` messages to ``sink`` (a bounded loop, ``pause`` seconds
apart; refusals are counted and the loop goes on); ``Sink`` acks them. With
``flaky``, the sink fails the first message it sees (``max_attempts: 1`` then
dead-letters it) and handles every later one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

STORES = ["memory", "sqlite", "redis"]  # with the `redis_url` fixture of tests/e2e/conftest.py


AGENTS = """
import trio
from mas import Agent, AgentMessage
from mas.errors import RejectedError

FAILED = []


class Sender(Agent[dict]):
    def __init__(self, agent_id, *, count, pause, **kwargs):
        super().__init__(agent_id, **kwargs)
        self.count = count
        self.pause = pause

    async def on_start(self):
        for index in range(self.count):
            try:
                await self.send("sink", "tick", {"index": index})
            except RejectedError:
                pass
            await trio.sleep(self.pause)


class Sink(Agent[dict]):
    def __init__(self, agent_id, *, flaky=False, **kwargs):
        super().__init__(agent_id, **kwargs)
        self.flaky = flaky

    @Agent.on("tick")
    async def tick(self, message: AgentMessage) -> None:
        if self.flaky and not FAILED:
            FAILED.append(message.message_id)
            raise RuntimeError("the first tick fails")
"""


def write_load_project(
    directory: Path,
    *,
    store: str = "sqlite",
    redis_url: str | None = None,
    count: int = 100_000,
    pause: float = 0.01,
    flaky: bool = False,
    metrics_port: int | None = None,
    per_minute: int = 1_000_000,
    port: int = 0,
    certs: bool = False,
) -> Path:
    """Write mas.yaml and load_agents.py into ``directory``; returns the config path.

    With ``certs``, the config names TLS files and ``mas certs`` writes them, so agents
    in other processes (``mas agent``) can connect; they need a fixed ``port`` too.
    """
    (directory / "load_agents.py").write_text(AGENTS)
    store_line = f"store: {{backend: {store}" + (f", url: '{redis_url}'" if redis_url else "") + "}"
    telemetry = ""
    if metrics_port is not None:
        telemetry = f"  telemetry: {{prometheus: {{port: {metrics_port}}}}}\n"
    config = directory / "mas.yaml"
    tls = (
        "tls_ca_path: certs/ca.pem\ntls_server_cert_path: certs/server.pem\n"
        "tls_server_key_path: certs/server.key\n"
        if certs
        else ""
    )

    def agent_tls(agent_id: str) -> str:
        if not certs:
            return ""
        return f"    tls_cert_path: certs/{agent_id}.pem\n    tls_key_path: certs/{agent_id}.key\n"

    config.write_text(
        f"server_listen_addr: 127.0.0.1:{port}\n"
        f"{tls}"
        f"{store_line}\n"
        "limits: {max_attempts: 1, shutdown_grace: 1.0}\n"
        "gateway:\n"
        f"  rate_limit: {{per_minute: {per_minute}, per_hour: {per_minute * 60}}}\n"
        f"{telemetry}"
        "permissions:\n  - {type: allow, sender: sender, targets: [sink]}\n"
        "agents:\n"
        "  - agent_id: sink\n"
        "    class_path: load_agents:Sink\n"
        f"    init_kwargs: {{flaky: {str(flaky).lower()}}}\n"
        f"{agent_tls('sink')}"
        "  - agent_id: sender\n"
        "    class_path: load_agents:Sender\n"
        f"    init_kwargs: {{count: {count}, pause: {pause}}}\n"
        f"{agent_tls('sender')}"
    )
    if certs:
        written = mas_command("certs", str(directory), cwd=directory)
        assert written.returncode == 0, written.stderr
    return config


def mas_command(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m mas ARGS``, run to completion."""
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "mas", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def status_json(directory: Path) -> dict[str, Any]:
    """``mas status --json`` of the server running from ``directory``, parsed."""
    result = mas_command("status", str(directory), "--json", cwd=directory)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def agent_row(snapshot: dict[str, Any], agent_id: str) -> dict[str, Any]:
    """The row of ``agent_id`` in a status snapshot."""
    [row] = [row for row in snapshot["agents"] if row["agent_id"] == agent_id]
    return row
