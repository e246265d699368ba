"""Retry, then dead letter, then replay, end to end on the SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import trio

from mas.config import load_config
from mas.runtime import Runtime

AGENTS = """
import trio
from mas import Agent, AgentMessage

ATTEMPTS = []
HANDLED = []
FAIL = True
DONE = trio.Event()


class Worker(Agent[dict]):
    @Agent.on("work")
    async def work(self, message: AgentMessage) -> None:
        ATTEMPTS.append(message.meta.attempt)
        if FAIL:
            if message.meta.attempt >= 2:
                DONE.set()
            raise RuntimeError("cannot do this work")
        HANDLED.append(message.data)
        DONE.set()


class Starter(Agent[dict]):
    def __init__(self, agent_id: str, *, send: bool, **kwargs: object) -> None:
        super().__init__(agent_id, **kwargs)
        self.send_work = send

    async def on_start(self) -> None:
        if self.send_work:
            await self.send("worker", "work", {"job": 7})
        with trio.fail_after(20):
            await DONE.wait()
        await trio.sleep(0.2)  # the worker's nack or ack reaches the server
        self.stop_runtime()
"""

CONFIG = """
server_listen_addr: 127.0.0.1:0
gateway: {audit: {file_path: audit.jsonl}}
limits: {max_attempts: 2, redelivery_backoff: 0.05}
permissions:
  - {type: allow, sender: starter, targets: [worker]}
agents:
  - {agent_id: worker, class_path: "MODULE:Worker"}
  - {agent_id: starter, class_path: "MODULE:Starter", init_kwargs: {send: SEND}}
"""


def _mas(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    return subprocess.run(
        [sys.executable, "-m", "mas", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_dead_letter_then_replay(tmp_path: Path) -> None:
    module_name = f"dlq_agents_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module_name}.py").write_text(AGENTS)
    config = tmp_path / "mas.yaml"

    def write_config(send: bool) -> None:
        text = textwrap.dedent(CONFIG).replace("MODULE", module_name)
        config.write_text(text.replace("SEND", "true" if send else "false"))

    write_config(send=True)
    with trio.fail_after(30):
        await Runtime(load_config(config, env={}), handle_signals=False).run()
    module = sys.modules[module_name]
    assert module.ATTEMPTS == [1, 2]

    listed = _mas("dlq", "list", str(config), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (entry["target_id"], entry["attempts"], entry["sender_id"]) == ("worker", 2, "starter")
    assert entry["envelope"]["data"] == {"job": 7}

    replayed = _mas("dlq", "replay", "--all", "--config", str(config), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 message" in replayed.stdout
    assert _mas("dlq", "list", str(config), cwd=tmp_path).stdout.strip() == ""

    module.FAIL = False
    module.DONE = trio.Event()
    write_config(send=False)
    with trio.fail_after(30):
        await Runtime(load_config(config, env={}), handle_signals=False).run()
    assert module.HANDLED == [{"job": 7}]
    # The replay is in the trail (the server copies the store's chain to the file).
    audit = _mas(
        "audit",
        "tail",
        "--json",
        "--decision",
        "DLQ_REPLAYED",
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert audit.returncode == 0, audit.stderr
    [record] = [json.loads(line) for line in audit.stdout.splitlines()]
    assert record["message_id"] == entry["message_id"]
    assert "replayed by" in record["reason"]
    listed = _mas(
        "audit", "tail", "--decision", "DLQ_LISTED", "--config", str(config), cwd=tmp_path
    )
    assert listed.stdout.count("DLQ_LISTED") == 2
    del sys.modules[module_name]
