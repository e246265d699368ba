"""``mas init [DIR]``: a new project that runs and tests as generated.

Writes three files and nothing else (an existing one is never overwritten)::

    agents.py        two agents: ``Shouter`` answers "shout" requests, ``Caller`` asks it
    mas.yaml         both agents, deny-by-default permissions that let them talk
    test_agents.py   a pytest test of ``Shouter`` over real mutual TLS (mas.testing)

``python -m mas run DIR`` runs it to completion; ``python -m pytest DIR`` passes
(with the test extra installed: ``pip install 'mas[test]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from ..errors import ConfigError
from .exits import EXIT_OK

AGENTS_PY: Final = '''\
"""This project's agents: Caller asks Shouter to shout each of its words."""

from __future__ import annotations

import msgspec

from mas import Agent, AgentMessage


class Shout(msgspec.Struct):
    """A "shout" request."""

    text: str


class Shouted(msgspec.Struct):
    """Shouter's reply."""

    text: str


class Shouter(Agent[dict[str, object]]):
    """Answers every "shout" request with its text in capitals."""

    @Agent.on("shout", model=Shout)
    async def shout(self, message: AgentMessage, payload: Shout) -> None:
        await message.reply("shouted", Shouted(text=payload.text.upper()))


class Caller(Agent[dict[str, object]]):
    """Asks Shouter to shout each word, prints the answers, then stops the runtime."""

    def __init__(self, agent_id: str, *, words: list[str], **kwargs: object) -> None:
        super().__init__(agent_id, **kwargs)
        self.words = words

    async def on_start(self) -> None:
        for word in self.words:
            reply = await self.request("shouter", "shout", {"text": word}, model=Shouted)
            print(f"caller: {word} -> {reply.text}", flush=True)
        self.stop_runtime()
'''

MAS_YAML: Final = """\
# Run with `python -m mas run` from this directory; test with `python -m pytest`.
#
# No TLS files are named, so `mas run` makes a throwaway development PKI and
# every message still travels over mutual TLS (loopback only). Port 0 picks a
# free port. Queues, state and the audit trail are kept in mas.sqlite3 next to
# this file; delete it to start afresh.
server_listen_addr: 127.0.0.1:0

# Deny-by-default: only what is listed here may be sent (a reply is allowed by
# the request it answers).
permissions:
  - type: allow
    sender: caller
    targets: [shouter]

agents:
  - agent_id: shouter
    class_path: agents:Shouter

  - agent_id: caller
    class_path: agents:Caller
    init_kwargs:
      words: [hello, world]
"""

TEST_AGENTS_PY: Final = '''\
"""Tests of this project's agents over real mutual TLS: `python -m pytest`."""

from __future__ import annotations

from pathlib import Path

import trio

from agents import Shouted, Shouter
from mas import Agent, PermissionDeniedError, load_config
from mas.testing import TestPKI, open_test_server

CONFIG = Path(__file__).with_name("mas.yaml")  # the real permissions (listens on port 0)


async def _shouter_answers_in_capitals() -> None:
    pki = TestPKI()  # a throwaway CA with SPIFFE certificates for any agent id
    config = load_config(CONFIG).config
    with trio.fail_after(30):
        async with open_test_server(config, pki) as server:
            assert server.address is not None
            address = f"127.0.0.1:{server.address.port}"
            shouter = Shouter(
                "shouter", server_addr=address, tls=pki.client_ssl_context("shouter")
            )
            caller = Agent("caller", server_addr=address, tls=pki.client_ssl_context("caller"))
            async with shouter, caller:
                reply = await caller.request("shouter", "shout", {"text": "hi"}, model=Shouted)
                assert reply == Shouted(text="HI")
                try:  # deny-by-default: nothing allows shouter to message caller
                    await shouter.send("caller", "shout", {"text": "back"})
                except PermissionDeniedError:
                    pass
                else:
                    raise AssertionError("the send should have been refused")


def test_shouter_answers_in_capitals() -> None:
    trio.run(_shouter_answers_in_capitals)
'''

FILES: Final = {
    "agents.py": AGENTS_PY,
    "mas.yaml": MAS_YAML,
    "test_agents.py": TEST_AGENTS_PY,
}


def scaffold(directory: Path) -> list[Path]:
    """Write the project files into ``directory`` (created if needed); returns their paths.

    Raises ``ConfigError`` naming the files that already exist (nothing is written then).
    """
    targets = [directory / name for name in FILES]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise ConfigError(
            f"refusing to overwrite {', '.join(existing)}: choose an empty directory "
            "(`python -m mas init DIR`)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in zip(targets, FILES.values(), strict=True):
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the project into {directory}: {exc}") from exc
    return targets


def run(args: argparse.Namespace) -> int:
    """``mas init DIR``: scaffold, then say what to do next."""
    directory = Path(args.directory)
    target = directory.resolve()
    scaffold(target)
    shown = directory if not directory.is_absolute() else target
    print(
        f"created {', '.join(FILES)} in {target}\n"
        f"run it:   python -m mas run {shown}\n"
        f"test it:  python -m pytest {shown}   (needs pip install 'mas[test]')",
        file=sys.stdout,
    )
    return EXIT_OK
