"""``mas dlq list | replay``: dead-lettered messages, from the command line.

Reads and writes the store named by mas.yaml. A listing gets a ``DLQ_LISTED``
audit record and every replayed message a ``DLQ_REPLAYED`` one, naming the
operator. While a server runs for the config, both ask it over its control
socket (``mas.control``), on every store: the SQLite store belongs to that
process, the memory store's dead letters exist only in it, and the server wakes
the agents whose messages came back. With no server running, they open the
store themselves. Only when a server holds the SQLite file without answering on
a control socket (it has none: ``control_socket`` too long) does ``list`` read
the file alongside it, and say that this listing could not be audited.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator

import msgspec
import trio

from ..audit.record import dlq_listed, dlq_replayed
from ..config import LoadedConfig, load_config
from ..control import socket_path
from ..control.client import ControlClient, ServerNotRunningError
from ..control.protocol import (
    MAX_REPLAY_IDS,
    DlqListRequest,
    DlqReplayRequest,
    ListedLetter,
    ListReply,
    ReplayedMessage,
    ReplayReply,
)
from ..envelope import decode_envelope
from ..errors import ConfigError
from ..runtime import open_store, sqlite_path
from ..store import DeadLetter, QueuedMessage, Store
from ..store.sqlite.schema import StoreUnusableError
from .exits import EXIT_FAILED, EXIT_OK, verdict


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``dlq`` action; returns the exit status."""
    if args.dlq_command == "list":
        loaded = load_config(args.config)
        letters = _list_by_server(loaded, args.agent)
        if letters is None:
            lines = trio.run(_list, loaded, args.agent, args.json)
        else:
            lines = [_format(dead, args.json) for dead in letters]
        for line in lines:
            print(line)
        return EXIT_OK
    if not args.all and not args.message_ids:
        raise ConfigError("name the message ids to replay, or pass --all")
    loaded = load_config(args.config)
    ids = None if args.all else list(args.message_ids)
    replayed = _replay_by_server(loaded, ids)
    if replayed is None:
        replayed = [
            ReplayedMessage(message_id=d.message.message_id, target_id=d.message.target_id)
            for d in trio.run(_replay, loaded, ids)
        ]
    print(f"replayed {len(replayed)} message(s)")
    for message in replayed:
        print(f"  {message.message_id} -> {message.target_id}")
    missing = set(args.message_ids) - {m.message_id for m in replayed}
    if missing:
        return verdict(EXIT_FAILED, f"not in the dead-letter queue: {', '.join(sorted(missing))}")
    return EXIT_OK


def _replay_by_server(
    loaded: LoadedConfig, message_ids: list[str] | None
) -> list[ReplayedMessage] | None:
    """Have the running server replay (None: no server runs for this config)."""
    client = _running_server(loaded)
    if client is None:
        return None  # no server: the store is ours to open
    replayed: list[ReplayedMessage] = []
    with client:
        # Requests are bounded: a long list of ids goes in several.
        batches = [None] if message_ids is None else _chunks(message_ids, MAX_REPLAY_IDS)
        for batch in batches:
            reply = client.request(DlqReplayRequest(message_ids=batch, operator=_operator()))
            assert isinstance(reply, ReplayReply)
            replayed += reply.replayed
    return replayed


def _running_server(loaded: LoadedConfig) -> ControlClient | None:
    """A connection to the server running for this config (None: none runs)."""
    client = ControlClient(socket_path(loaded), config_path=loaded.path)
    try:
        client.connect()
    except ServerNotRunningError:
        return None
    return client


def _chunks(items: list[str], size: int) -> list[list[str] | None]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


@contextlib.asynccontextmanager
async def _store(loaded: LoadedConfig) -> AsyncIterator[Store]:
    config = loaded.config
    if config.store.backend == "memory":
        raise ConfigError(
            "the memory store keeps dead letters only inside its server process, and no "
            "server is running for this config: while one runs, `mas dlq list` and "
            "`mas dlq replay` ask it; use the sqlite or redis store to keep dead letters "
            "from one run to the next"
        )
    async with open_store(config, loaded.base_dir) as store:
        yield store


def _list_by_server(loaded: LoadedConfig, agent: str | None) -> list[DeadLetter] | None:
    """The dead letters, from the running server (None: no server runs for this config)."""
    client = _running_server(loaded)
    if client is None:
        return None
    letters: list[DeadLetter] = []
    start: int | None = 0
    with client:
        while start is not None:  # pages are bounded: a long queue comes in several
            request = DlqListRequest(agent_id=agent, start=start, operator=_operator())
            reply = client.request(request)
            assert isinstance(reply, ListReply)
            letters += (_dead_letter(listed) for listed in reply.letters)
            start = reply.next_start
    return letters


def _dead_letter(listed: ListedLetter) -> DeadLetter:
    message = QueuedMessage(
        message_id=listed.message_id,
        target_id=listed.target_id,
        instance_id=None,
        envelope_json=listed.envelope_json,
        enqueued_at=0.0,
        attempt=listed.attempt,
    )
    return DeadLetter(
        message=message, reason=listed.reason, dead_lettered_at=listed.dead_lettered_at
    )


async def _list(loaded: LoadedConfig, agent: str | None, as_json: bool) -> list[str]:
    config = loaded.config
    try:
        async with _store(loaded) as store:
            letters = await store.dead_letters(agent)
            await store.append_audit([dlq_listed(time.time(), _operator(), len(letters), agent)])
    except StoreUnusableError:
        if config.store.backend != "sqlite":
            raise
        # A running server holds the SQLite store: read the file alongside it.
        letters = await trio.to_thread.run_sync(_read_sqlite_dead_letters, loaded, agent)
        print(
            "(read while the server runs: this listing is not in the audit trail)",
            file=sys.stderr,
        )
    return [_format(dead, as_json) for dead in letters]


def _operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


async def _replay(loaded: LoadedConfig, message_ids: list[str] | None) -> list[DeadLetter]:
    async with _store(loaded) as store:
        now = time.time()
        replayed = await store.replay_dead_letters(message_ids, now)
        operator = _operator()
        await store.append_audit(
            [
                dlq_replayed(
                    now, operator, dead.message.message_id, dead.message.target_id, dead.reason
                )
                for dead in replayed
            ]
        )
        return replayed


def _read_sqlite_dead_letters(loaded: LoadedConfig, agent: str | None) -> list[DeadLetter]:
    """Read dead letters from the SQLite file without taking it from a running server."""
    from ..store.sqlite.store import dead_letters

    path = sqlite_path(loaded.config, loaded.base_dir)
    if not path.exists():
        raise ConfigError(f"no store at {path}: nothing has run with this config yet")
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return dead_letters(conn, agent)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read the store {path}: {exc}") from exc
    finally:
        conn.close()


def _format(dead: DeadLetter, as_json: bool) -> str:
    message = dead.message
    try:
        envelope = decode_envelope(message.envelope_json)
        sender, message_type = envelope.sender_id, envelope.message_type
    except ValueError:
        sender, message_type = "?", "?"
    if as_json:
        return msgspec.json.encode(
            {
                "message_id": message.message_id,
                "target_id": message.target_id,
                "sender_id": sender,
                "message_type": message_type,
                "attempts": message.attempt,
                "reason": dead.reason,
                "dead_lettered_at": dead.dead_lettered_at,
                "envelope": msgspec.json.decode(message.envelope_json),
            }
        ).decode()
    return (
        f"{message.message_id}  {sender} -> {message.target_id}  {message_type}  "
        f"attempts={message.attempt}  reason={dead.reason}"
    )
