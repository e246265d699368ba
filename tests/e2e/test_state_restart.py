"""State survives a restart of ``python -m mas run`` on the default store (SQLite).

Three ways of counting, each as users write them, in one handler: the old quick start's
``update_state({"answered": self.state.answered + 1})``, the seed users' mutate-then-update,
and the safe ``edit_state``. Each run asks once; the second run must see each count at 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

AGENTS = """
import json

import msgspec

from mas import Agent, AgentMessage


class Counts(msgspec.Struct):
    answered: int = 0
    handled: int = 0
    edited: int = 0


def _edit(state: Counts) -> None:
    state.edited += 1


class Counter(Agent[Counts]):
    @Agent.on("count")
    async def count(self, message: AgentMessage) -> None:
        await self.update_state({"answered": self.state.answered + 1})
        self.state.handled += 1
        await self.update_state({"handled": self.state.handled})
        await self.edit_state(_edit)
        await message.reply("counted", msgspec.to_builtins(self.state))


class Asker(Agent[dict[str, object]]):
    async def on_start(self) -> None:
        reply = await self.request("counter", "count", {}, timeout=20)
        print("COUNTS " + json.dumps(reply.data), flush=True)
        self.stop_runtime()
"""

CONFIG = """
server_listen_addr: 127.0.0.1:0
permissions:
  - type: allow_bidirectional
    agents: [asker, counter]
agents:
  - agent_id: counter
    class_path: agents:Counter
  - agent_id: asker
    class_path: agents:Asker
"""


def _run(project: Path) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    result = subprocess.run(
        [sys.executable, "-m", "mas", "run", str(project)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("COUNTS ")]
    counts: dict[str, int] = json.loads(line.removeprefix("COUNTS "))
    return counts


@pytest.mark.slow
def test_every_way_of_counting_survives_a_restart_on_the_default_store(tmp_path: Path) -> None:
    (tmp_path / "agents.py").write_text(AGENTS)
    (tmp_path / "mas.yaml").write_text(CONFIG)  # names no store: SQLite, sync full
    assert _run(tmp_path) == {"answered": 1, "handled": 1, "edited": 1}
    assert (tmp_path / "mas.sqlite3").exists()
    assert _run(tmp_path) == {"answered": 2, "handled": 2, "edited": 2}
