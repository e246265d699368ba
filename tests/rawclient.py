"""A bare protocol client for tests that must misbehave (spoof, replay, flood).

It speaks the wire protocol directly through purerpc's stream objects, with
none of the SDK's checks, so tests can send what a hostile client would.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import hpack
import purerpc
import trio

from mas._proto import runtime_pb2 as pb
from mas._purerpc import open_channel, release_stream, write_messages

SERVICE = "mas.runtime.v1.RuntimeService"


class CallFailed(Exception):
    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}")


def _status(stream: Any) -> CallFailed:
    event = stream.end_stream_event
    status = getattr(event, "status", None)
    if status is None:
        return CallFailed("UNKNOWN", "no status")
    return CallFailed(status.status_code.name, status.status_message)


class RawClient:
    def __init__(self, channel: Any) -> None:
        self.client = purerpc.Client(SERVICE, channel)

    async def unary(self, method: str, request: Any, response_type: Any) -> Any:
        stream = await self.client.rpc(method, type(request), response_type)
        try:
            await stream.send_message(request)
            await stream.close()
            response = await stream.receive_message()
            if response is None:
                raise _status(stream)
            # Drain the trailers so the stream is finished.
            if await stream.receive_message() is not None:
                raise AssertionError("more than one response")
            return response
        finally:
            release_stream(stream)

    async def transport(self) -> RawSession:
        stream = await self.client.rpc("Transport", pb.ClientEvent, pb.ServerEvent)
        return RawSession(stream)


class RawSession:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.seq = 0

    async def send(self, **event: Any) -> None:
        await self.stream.send_message(pb.ClientEvent(**event))

    async def send_together(self, events: list[pb.ClientEvent]) -> None:
        """Write several frames in one HTTP/2 DATA frame (so one TLS record)."""
        await write_messages(self.stream, events)

    def frame(self, kind: str, **fields: Any) -> tuple[int, pb.ClientEvent]:
        """The next stream fast-path frame of ``kind`` and its sequence number."""
        self.seq += 1
        message = {"send": pb.StreamSend, "request": pb.StreamRequest, "reply": pb.StreamReply}[
            kind
        ]
        return self.seq, pb.ClientEvent(**{kind: message(seq=self.seq, **fields)})

    async def receive(self) -> pb.ServerEvent:
        event = await self.stream.receive_message()
        if event is None:
            raise _status(self.stream)
        return event

    async def hello(self, instance_id: str = "", **extra: Any) -> pb.Welcome:
        await self.send(hello=pb.Hello(instance_id=instance_id, **extra))
        event = await self.receive()
        assert event.WhichOneof("event") == "welcome", event
        return event.welcome

    async def next_delivery(self) -> pb.Delivery:
        while True:
            event = await self.receive()
            if event.WhichOneof("event") == "delivery":
                return event.delivery
            if event.WhichOneof("event") == "deliveries":
                assert len(event.deliveries.deliveries) == 1
                return event.deliveries.deliveries[0]

    async def call(self, kind: str, **fields: Any) -> pb.Result:
        """Send a stream fast-path frame and return its Result."""
        seq, frame = self.frame(kind, **fields)
        await self.stream.send_message(frame)
        while True:
            event = await self.receive()
            if event.WhichOneof("event") == "result" and event.result.seq == seq:
                return event.result

    async def close(self) -> None:
        await self.stream.close()


@asynccontextmanager
async def raw_client(port: int, context: ssl.SSLContext) -> AsyncIterator[RawClient]:
    async with open_channel("127.0.0.1", port, context) as channel:
        yield RawClient(channel)


@asynccontextmanager
async def sessions(server: Any, pki: Any, *agent_ids: str) -> AsyncIterator[list[RawSession]]:
    """One connection and one Transport session per agent id (instance ``<id>1``), said Hello."""
    async with AsyncExitStack() as stack:
        opened = []
        for agent_id in agent_ids:
            client = await stack.enter_async_context(
                raw_client(server.address.port, pki.client_ssl_context(agent_id))
            )
            session = await client.transport()
            await session.hello(f"{agent_id}1")
            opened.append(session)
        yield opened


# -- raw HTTP/2 frames: a client that breaks the rules of the protocol itself ----------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS = 0x1, 0x4


def h2_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 9-byte header (length, type, flags, stream id) and payload."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + (stream_id & 0x7FFFFFFF).to_bytes(4, "big")
        + payload
    )


def grpc_message(body: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message; ``length`` may lie about the body's size."""
    declared = len(body) if length is None else length
    return bytes((1 if compressed else 0,)) + declared.to_bytes(4, "big") + body


class H2Attacker:
    """HTTP/2 over mTLS with nothing but frames: floods, resets, half-sent messages.

    It never reads unless asked (``read_for``), so it also plays the client whose
    receive buffers fill up while the server keeps answering.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._encoder = hpack.Encoder()
        self.next_stream_id = 1
        self.received = bytearray()

    async def preface(self, window: int = 65_535) -> None:
        """The client preface and an empty SETTINGS frame (``window``: initial stream window)."""
        settings = (0x4).to_bytes(2, "big") + window.to_bytes(4, "big")
        await self.send(PREFACE + h2_frame(SETTINGS, 0, 0, settings))

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    def headers(
        self,
        method: str = "Transport",
        *,
        end_stream: bool = False,
        extra: Sequence[tuple[str, str]] = (),
        stream_id: int | None = None,
    ) -> tuple[int, bytes]:
        """A HEADERS frame opening a gRPC call of ``method``: (its stream id, the frame)."""
        if stream_id is None:
            stream_id = self.next_stream_id
            self.next_stream_id += 2
        block = self._encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", f"/{SERVICE}/{method}"),
                (":authority", "localhost"),
                ("content-type", "application/grpc+proto"),
                ("te", "trailers"),
                *extra,
            ]
        )
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return stream_id, h2_frame(HEADERS, flags, stream_id, block)

    @staticmethod
    def rst(stream_id: int, code: int = 0x8) -> bytes:
        return h2_frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))

    @staticmethod
    def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
        return h2_frame(DATA, END_STREAM if end_stream else 0, stream_id, payload)

    @staticmethod
    def ping(opaque: int = 0) -> bytes:
        return h2_frame(PING, 0, 0, opaque.to_bytes(8, "big"))

    async def read_for(self, seconds: float) -> bool:
        """Read for up to ``seconds``; True when the server closed the connection."""
        with trio.move_on_after(seconds):
            while True:
                try:
                    chunk = await self.stream.receive(65_536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return True
                except ssl.SSLError:
                    return True
                self.received += chunk
        return False

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """The complete frames read so far, as (type, flags, stream id, payload)."""
        frames, at, data = [], 0, bytes(self.received)
        while at + 9 <= len(data):
            length = int.from_bytes(data[at : at + 3], "big")
            if at + 9 + length > len(data):
                break
            kind, flags = data[at + 3], data[at + 4]
            stream_id = int.from_bytes(data[at + 5 : at + 9], "big") & 0x7FFFFFFF
            frames.append((kind, flags, stream_id, data[at + 9 : at + 9 + length]))
            at += 9 + length
        return frames

    def goaway_code(self) -> int | None:
        """The error code of the GOAWAY read so far, if any."""
        for kind, _flags, _stream, payload in self.frames():
            if kind == GOAWAY:
                return int.from_bytes(payload[4:8], "big")
        return None


@asynccontextmanager
async def h2_attacker(port: int, context: ssl.SSLContext) -> AsyncIterator[H2Attacker]:
    """A TLS connection (ALPN h2) for raw frames; closed on exit."""
    context.set_alpn_protocols(["h2"])
    stream = await anyio.connect_tcp(
        "127.0.0.1", port, ssl_context=context, tls=True, tls_standard_compatible=False
    )
    try:
        yield H2Attacker(stream)
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(Exception):
                await stream.aclose()


@asynccontextmanager
async def refused_client(port: int, context: ssl.SSLContext) -> AsyncIterator[RawClient]:
    """``raw_client`` for a connection the server is expected to close under it.

    purerpc's writer task fails when it writes to a socket the server closed; that
    ending is the expected one here, so it is not an error of the test.
    """
    try:
        async with raw_client(port, context) as client:
            yield client
    except* (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


async def wait_until_closed(client: RawClient, within: float = 4.0) -> None:
    """Return once the server has closed ``client``'s connection (else fails after ``within`` s)."""
    with trio.fail_after(within):
        # purerpc's channel has no event for this; its flag is set by the reader task.
        while not client.client.channel.closed:  # noqa: ASYNC110
            await trio.sleep(0.01)
