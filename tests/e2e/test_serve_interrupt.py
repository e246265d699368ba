"""Two quick Ctrl-C's to ``mas serve`` on the Redis store, after traffic: never a traceback.

``mas serve`` runs as a subprocess (as a user runs it) on a real ``redis-server``; two
agents of this test exchange requests and messages through it and stay connected while
the test sends SIGINT twice, with gaps that land the second one during the graceful stop,
just after it, and during the interpreter's shutdown. Whatever the timing, the process
ends with status 0 (the graceful stop had finished: the second signal had nothing left to
stop) or 130 with the one line ``mas: interrupted`` (it cut the stop short), never with a
traceback, status 1, or death by the signal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from redis_server import RedisServer, running_redis

from mas import Agent, AgentMessage
from mas.testing import TestPKI

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
GAPS = (0.0, 0.003, 0.01, 0.05, 0.1, 0.2)  # seconds between the two SIGINTs
MESSAGES = 20  # requests, and as many sends, before the signals


class Answerer(Agent[dict[str, Any]]):
    @Agent.on("question")
    async def question(self, message: AgentMessage) -> None:
        await message.reply("answer", message.data)

    @Agent.on("note")
    async def note(self, message: AgentMessage) -> None:
        pass


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _project(directory: Path, pki: TestPKI, redis_url: str) -> None:
    pki.write(directory / "certs", ["a", "b"])
    (directory / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\n"
        "tls_ca_path: certs/ca.pem\n"
        "tls_server_cert_path: certs/server.pem\n"
        "tls_server_key_path: certs/server.key\n"
        f"store: {{backend: redis, url: '{redis_url}'}}\n"
        "permissions: [{type: allow_bidirectional, agents: [a, b]}]\n"
        "agents: [{agent_id: a}, {agent_id: b}]\n"
    )


async def _serve_then_interrupt_twice(directory: Path, pki: TestPKI, gap: float) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "mas", "serve", str(directory)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    text = ""
    try:
        while (found := LISTENING.search(text)) is None:
            chunk = await process.stderr.receive_some()
            assert chunk, f"mas serve ended before listening:\n{text}"
            text += chunk.decode(errors="replace")
        address = f"127.0.0.1:{found.group(1)}"
        a = Agent("a", server_addr=address, tls=pki.client_ssl_context("a"))
        b = Answerer("b", server_addr=address, tls=pki.client_ssl_context("b"))
        async with a, b:
            for n in range(MESSAGES):
                reply = await a.request("b", "question", {"n": n}, timeout=10)
                assert reply.data == {"n": n}
                await a.send("b", "note", {"n": n})
            process.send_signal(signal.SIGINT)
            await trio.sleep(gap)
            process.send_signal(signal.SIGINT)
            while chunk := await process.stderr.receive_some():
                text += chunk.decode(errors="replace")
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, text


@pytest.mark.slow
async def test_two_quick_ctrl_cs_after_traffic_on_redis_end_in_one_line(
    tmp_path: Path, pki: TestPKI, redis: RedisServer
) -> None:
    _project(tmp_path, pki, redis.url)
    for gap in GAPS:
        with trio.fail_after(60):
            status, stderr = await _serve_then_interrupt_twice(tmp_path, pki, gap)
        assert "Traceback" not in stderr, (gap, stderr)
        assert status in (0, 130), (gap, status, stderr)  # never 1, never killed by SIGINT
        last = stderr.strip().splitlines()[-1]
        if status == 130:
            assert last == "mas: interrupted", (gap, stderr)
        else:
            assert last.startswith("mas: stopped:"), (gap, stderr)  # the graceful stop's line
        if "second stop signal" in stderr:
            assert status == 130, (gap, stderr)  # it cut the graceful stop short
