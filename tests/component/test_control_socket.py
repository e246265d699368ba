"""The control socket against well-behaved and hostile local clients (real Unix sockets)."""

from __future__ import annotations

import math
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from mas.audit.record import AuditDraft
from mas.control.protocol import (
    HEADER,
    MAX_LISTED,
    MAX_LISTED_BYTES,
    MAX_REQUEST_BYTES,
    AgentRow,
    DlqListRequest,
    DlqReplayRequest,
    ErrorReply,
    LatencyHistogram,
    ListReply,
    ReloadReply,
    ReloadRequest,
    ReplayedMessage,
    ReplayReply,
    Reply,
    StatusReply,
    StatusRequest,
    StatusSnapshot,
    StoreHealth,
    decode_reply,
    encode_frame,
)
from mas.errors import ConfigError
from mas.server.control import (
    IDLE_TIMEOUT,
    MAX_CLIENTS,
    READ_TIMEOUT,
    WRITE_TIMEOUT,
    ControlServer,
    list_page,
)
from mas.store import DeadLetter, QueuedMessage


def _snapshot(agents: int = 1) -> StatusSnapshot:
    row = AgentRow(
        agent_id="a",
        configured=True,
        instances=1,
        connected=0,
        queue_depth=0,
        in_flight=0,
        retrying=0,
        dead_letters=0,
        sent=0,
        refused=0,
        delivered=0,
        nacked=0,
        dead_lettered=0,
        expired=0,
        last_activity=None,
    )
    return StatusSnapshot(
        server_id="s",
        version="0",
        pid=1,
        config_path="mas.yaml",
        time=0.0,
        started_at=0.0,
        listen="127.0.0.1:1",
        store=StoreHealth(backend="memory", where="here", reachable=True),
        sessions=0,
        connections=0,
        agents=[row] * agents,
        decisions={},
        decisions_last_minute={},
        refusals=[],
        latency=LatencyHistogram(bounds=[], counts=[0], sum=0.0, count=0),
        breakers=[],
    )


class Actions:
    def __init__(self) -> None:
        self.reloads = 0
        self.agents = 1
        self.fail_with: Exception | None = None
        self.letters: list[DeadLetter] = []

    async def status(self) -> StatusSnapshot:
        if self.fail_with is not None:
            raise self.fail_with
        return _snapshot(self.agents)

    async def reload(self) -> ReloadReply:
        self.reloads += 1
        if self.fail_with is not None:
            raise self.fail_with
        return ReloadReply(config_path="mas.yaml")

    async def dlq_replay(
        self, message_ids: list[str] | None, operator: str
    ) -> list[ReplayedMessage]:
        return [ReplayedMessage(message_id=m, target_id="a") for m in message_ids or []]

    async def dlq_list(self, request: DlqListRequest) -> ListReply:
        return list_page(self.letters, request.start)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="mas-ctl-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class Harness:
    def __init__(self, path: Path, actions: Actions, *, uid: int | None = None) -> None:
        self.records: list[AuditDraft] = []
        self.actions = actions
        self.server = ControlServer(path, actions, self._record, uid=uid)
        self.path = path

    async def _record(self, draft: AuditDraft) -> None:
        self.records.append(draft)

    @property
    def reasons(self) -> list[str]:
        return [r.reason for r in self.records]


@asynccontextmanager
async def serving(
    path: Path,
    *,
    uid: int | None = None,
    actions: Actions | None = None,
    clock: trio.testing.MockClock | None = None,
) -> AsyncIterator[Harness]:
    harness = Harness(path, actions or Actions(), uid=uid)
    async with trio.open_nursery() as nursery:
        # Start-up binds the socket in a worker thread (trio does, for the file system);
        # an autojumping clock would jump to the test's deadline while it waits.
        threshold = None if clock is None else clock.autojump_threshold
        if clock is not None:
            clock.autojump_threshold = math.inf
        started = await nursery.start(harness.server.serve)
        if clock is not None and threshold is not None:
            clock.autojump_threshold = threshold
        assert started == path
        yield harness
        nursery.cancel_scope.cancel()


async def _exchange(stream: trio.SocketStream, frame: bytes) -> Reply | None:
    """Send ``frame`` and read one reply (None: the server closed without one)."""
    await stream.send_all(frame)
    return await _read_reply(stream)


async def _read_reply(stream: trio.SocketStream) -> Reply | None:
    data = b""
    while True:
        if len(data) >= HEADER.size:
            (length,) = HEADER.unpack(data[: HEADER.size])
            if len(data) >= HEADER.size + length:
                return decode_reply(data[HEADER.size : HEADER.size + length])
        chunk = await stream.receive_some(1 << 16)
        if not chunk:
            return None
        data += chunk


async def _status_ok(stream: trio.SocketStream) -> bool:
    return isinstance(await _exchange(stream, encode_frame(StatusRequest())), StatusReply)


async def _closed(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some(1) == b""
    except trio.BrokenResourceError:
        return True


async def test_status_reload_and_replay_answered_and_audited(short_dir: Path) -> None:
    path = short_dir / "mas.yaml.sock"
    with trio.fail_after(10):
        async with serving(path) as harness:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                for _ in range(3):
                    reply = await _exchange(stream, encode_frame(StatusRequest()))
                    assert isinstance(reply, StatusReply)
                reply = await _exchange(stream, encode_frame(ReloadRequest()))
                assert isinstance(reply, ReloadReply)
                replay = DlqReplayRequest(message_ids=["m1", "m2"], operator="op@host")
                reply = await _exchange(stream, encode_frame(replay))
                assert isinstance(reply, ReplayReply)
                assert [m.message_id for m in reply.replayed] == ["m1", "m2"]
            uid = os.geteuid()
            # Status once per connection (mas top asks every second); actions every time.
            assert harness.reasons == [
                f"status by uid {uid} pid {os.getpid()}",
                f"reload by uid {uid} pid {os.getpid()}: applied",
                f"dlq replay by uid {uid} pid {os.getpid()}: 2 message(s)",
            ]
            assert {r.decision for r in harness.records} == {"CONTROL"}
    assert not path.exists()  # removed when the server stops


async def test_a_failed_action_is_answered_and_audited_and_the_server_goes_on(
    short_dir: Path,
) -> None:
    path = short_dir / "c.sock"
    actions = Actions()
    with trio.fail_after(10):
        async with serving(path, actions=actions) as harness:
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                actions.fail_with = ConfigError("reload failed: bad file")
                reply = await _exchange(stream, encode_frame(ReloadRequest()))
                assert reply == ErrorReply(code="failed", message="reload failed: bad file")
                actions.fail_with = RuntimeError("a bug")
                reply = await _exchange(stream, encode_frame(StatusRequest()))
                assert isinstance(reply, ErrorReply) and "internal error" in reply.message
                actions.fail_with = None
                reply = await _exchange(stream, encode_frame(StatusRequest()))
                assert isinstance(reply, StatusReply)
            assert any("failed: reload failed: bad file" in r for r in harness.reasons)


@pytest.mark.parametrize(
    "frame",
    [
        HEADER.pack(2**32 - 1),  # announces 4 GiB
        HEADER.pack(MAX_REQUEST_BYTES + 1) + b"x" * 16,
        HEADER.pack(3) + b"\xc1\xc1\xc1",  # not MessagePack
        encode_frame(ReloadReply(config_path="x")),  # a reply is not a request
        HEADER.pack(len(b := msgspec.msgpack.encode({"op": "shutdown"}))) + b,
        HEADER.pack(len(b := msgspec.msgpack.encode({"op": "status", "version": 99}))) + b,
        HEADER.pack(len(b := msgspec.msgpack.encode({"op": "status", "extra": 1}))) + b,
        HEADER.pack(
            len(b := msgspec.msgpack.encode({"op": "dlq_replay", "message_ids": ["x"] * 5000}))
        )
        + b,
    ],
)
async def test_a_bad_frame_is_refused_and_closed_and_others_are_still_served(
    short_dir: Path, frame: bytes
) -> None:
    path = short_dir / "c.sock"
    with trio.fail_after(10):
        async with serving(path) as harness:
            hostile = await trio.open_unix_socket(str(path))
            async with hostile:
                reply = await _exchange(hostile, frame)
                assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
                assert await _closed(hostile)
            assert harness.actions.reloads == 0
            polite = await trio.open_unix_socket(str(path))
            async with polite:
                assert await _status_ok(polite)


async def test_a_client_that_stops_mid_frame_is_cut_off(
    short_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = short_dir / "c.sock"
    with trio.fail_after(READ_TIMEOUT + 5):
        async with serving(path, clock=autojump_clock):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(HEADER.pack(100) + b"\x81")  # and then nothing
                began = trio.current_time()
                assert await _closed(stream)
                assert READ_TIMEOUT <= trio.current_time() - began < READ_TIMEOUT + 1


async def test_an_idle_client_is_closed(
    short_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = short_dir / "c.sock"
    with trio.fail_after(IDLE_TIMEOUT + 5):
        async with serving(path, clock=autojump_clock) as harness:
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                began = trio.current_time()
                assert await _closed(stream)
                assert IDLE_TIMEOUT <= trio.current_time() - began < IDLE_TIMEOUT + 1
            await trio.sleep(0.1)
            assert harness.server.active == 0


async def test_a_client_that_never_reads_its_answer_is_cut_off(
    short_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = short_dir / "c.sock"
    actions = Actions()
    actions.agents = 50_000  # a reply of megabytes: more than the socket buffers hold
    with trio.fail_after(60):
        async with serving(path, actions=actions, clock=autojump_clock) as harness:
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(encode_frame(StatusRequest()))
                await trio.sleep(WRITE_TIMEOUT + 1)  # and never reads
                assert harness.server.active == 0
            polite = await trio.open_unix_socket(str(path))
            async with polite:
                actions.agents = 1
                assert await _status_ok(polite)


async def test_clients_past_the_limit_are_told_busy(short_dir: Path) -> None:
    path = short_dir / "c.sock"
    with trio.fail_after(10):
        async with serving(path) as harness:
            idle = [await trio.open_unix_socket(str(path)) for _ in range(MAX_CLIENTS)]
            await trio.testing.wait_all_tasks_blocked()
            assert harness.server.active == MAX_CLIENTS
            extra = await trio.open_unix_socket(str(path))
            async with extra:
                reply = await _read_reply(extra)
                assert isinstance(reply, ErrorReply) and reply.code == "busy"
            for stream in idle:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert harness.server.active == 0
            again = await trio.open_unix_socket(str(path))
            async with again:
                assert await _status_ok(again)


async def test_a_peer_of_another_user_is_refused_and_audited(short_dir: Path) -> None:
    path = short_dir / "c.sock"
    other = os.geteuid() + 1  # the server "runs as" another user than this client
    with trio.fail_after(10):
        async with serving(path, uid=other) as harness:
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                reply = await _exchange(stream, encode_frame(ReloadRequest()))
                assert isinstance(reply, ErrorReply) and reply.code == "not_allowed"
                assert await _closed(stream)
            assert harness.actions.reloads == 0
            assert harness.reasons == [
                f"refused uid {os.geteuid()} pid {os.getpid()}: not the user the server runs as"
            ]


async def test_a_dead_servers_socket_is_replaced_and_a_live_ones_is_kept(
    short_dir: Path,
) -> None:
    path = short_dir / "c.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # a server that died: nobody listens
    with trio.fail_after(10):
        async with serving(path):
            inode = path.stat().st_ino
            second = Harness(path, Actions())
            async with trio.open_nursery() as nursery:
                assert await nursery.start(second.server.serve) is None
            assert path.stat().st_ino == inode  # the live server's socket is untouched
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                assert await _status_ok(stream)


async def test_a_file_that_is_not_a_socket_is_left_alone(short_dir: Path) -> None:
    path = short_dir / "c.sock"
    path.write_text("precious")
    harness = Harness(path, Actions())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(harness.server.serve) is None
    assert path.read_text() == "precious"


def _letter(index: int, envelope_bytes: int = 10) -> DeadLetter:
    message = QueuedMessage(
        message_id=f"m{index}",
        target_id="a",
        instance_id=None,
        envelope_json=b"x" * envelope_bytes,
        enqueued_at=0.0,
        attempt=3,
    )
    return DeadLetter(message=message, reason="max_attempts", dead_lettered_at=float(index))


def test_a_listing_comes_in_pages_bounded_by_count_and_bytes() -> None:
    letters = [_letter(i) for i in range(MAX_LISTED + 3)]
    first = list_page(letters, 0)
    assert len(first.letters) == MAX_LISTED and first.next_start == MAX_LISTED
    last = list_page(letters, MAX_LISTED)
    assert [m.message_id for m in last.letters] == [f"m{MAX_LISTED + i}" for i in range(3)]
    assert last.next_start is None
    big = [_letter(i, envelope_bytes=MAX_LISTED_BYTES // 2 + 1) for i in range(3)]
    assert [len(list_page(big, start).letters) for start in range(3)] == [1, 1, 1]
    assert list_page(big, 0).next_start == 1
    # One envelope over the byte bound still comes, alone: a listing always moves on.
    huge = [_letter(0, envelope_bytes=MAX_LISTED_BYTES + 1)]
    assert len(list_page(huge, 0).letters) == 1
    assert list_page([], 0) == ListReply(letters=[])


async def test_a_paged_listing_is_audited_once(short_dir: Path) -> None:
    path = short_dir / "mas.yaml.sock"
    actions = Actions()
    actions.letters = [_letter(i) for i in range(MAX_LISTED + 1)]
    with trio.fail_after(10):
        async with serving(path, actions=actions) as harness:
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                start: int | None = 0
                seen: list[str] = []
                while start is not None:
                    reply = await _exchange(stream, encode_frame(DlqListRequest(start=start)))
                    assert isinstance(reply, ListReply)
                    seen += [m.message_id for m in reply.letters]
                    start = reply.next_start
            assert seen == [f"m{i}" for i in range(MAX_LISTED + 1)]
            assert harness.reasons == [f"dlq list by uid {os.geteuid()} pid {os.getpid()}"]
